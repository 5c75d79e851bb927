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


def test_sliding_window_interior_rows_form_one_band_that_shares_its_tile_mask():
    pattern = make_pattern("sliding_window", window=100)
    ctx = MaskContext.for_length(1000)
    plan = static_plan(pattern, ctx, 64, "cpu")
    bands = [g for g in plan.groups if g.band is not None]
    assert len(bands) == 1
    band = bands[0]
    rows, width = band.rows, band.slots
    assert rows.numel() >= 8 and torch.equal(rows, torch.arange(int(rows[0]), int(rows[-1]) + 1))
    expected = band.band + torch.arange(rows.numel())[:, None] + torch.arange(width)[None, :]
    assert torch.equal(band.indices, expected), "row i reads blocks band + i .. band + i + K - 1"
    assert band.tile_mask.stride(0) == 0, "one tile mask, expanded over the band's rows"
    assert band.additive_tile_mask(torch.float32).stride(0) == 0
    # the last block is partial (1000 = 15 * 64 + 40): it must not be in a band
    assert all((int(g.rows[-1]) + 1) * 64 <= 1000 for g in bands)


def test_patterns_with_global_or_random_blocks_have_no_band_where_rows_differ():
    ctx = MaskContext.for_length(1024)
    plan = static_plan(make_pattern("bigbird", block_size=64), ctx, 64, "cpu")
    assert all(g.band is None for g in plan.groups), "random blocks: rows don't read consecutive windows"
