"""Block-sparse plans: every active tile is gathered exactly once, and wide rows do not widen the others."""

from __future__ import annotations

import pytest
import torch

from hf_sparse.kernels.plan import static_plan
from hf_sparse.patterns import MaskContext, block_layout, make_pattern


@pytest.mark.parametrize("name,options,length,bs", [
    ("bigbird", {"block_size": 64}, 4096, 64),
    ("sliding_window", {"window": 100}, 1000, 64),
    ("strided", {"stride": 50, "window": 20}, 777, 32),
    ("random", {"num_random": 2, "block_size": 16}, 300, 16),
])
@pytest.mark.parametrize("causal", [False, True])
def test_plan_gathers_exactly_the_active_tiles(name, options, length, bs, causal):
    pattern = make_pattern(name, **options)
    ctx = MaskContext.for_length(length, causal=causal)
    layout = block_layout(pattern, ctx, bs)
    plan = static_plan(pattern, ctx, bs, "cpu")
    seen = torch.zeros_like(layout.active)
    rows = torch.cat([g.rows for g in plan.groups])
    assert sorted(rows.tolist()) == list(range(plan.n_q_blocks)), "each query block in exactly one group"
    for group in plan.groups:
        for r, row in enumerate(group.rows.tolist()):
            ids = [i for i in group.indices[r].tolist() if i != plan.n_kv_blocks]
            assert ids == sorted(set(ids))
            seen[row, ids] = True
    assert torch.equal(seen, layout.active)
    if plan.order is not None:
        assert torch.equal(rows[plan.order], torch.arange(plan.n_q_blocks))


def test_bigbird_global_rows_get_their_own_group():
    pattern = make_pattern("bigbird", block_size=64)
    ctx = MaskContext.for_length(4096)
    plan = static_plan(pattern, ctx, 64, "cpu")
    layout = block_layout(pattern, ctx, 64)
    assert len(plan.groups) >= 2
    widest = max(plan.groups, key=lambda g: g.slots)
    assert widest.slots == 64 and widest.rows.tolist() == [0, 1]
    # padding rows to their group's width costs little: computed tiles within 10% of the active ones
    assert plan.computed_fraction <= 1.1 * layout.block_density
