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
        shared = group.band is not None and group.band_step == 0  # reads its whole span, masks what it skips
        mask = group.tile_mask  # built on access for bands and shared windows
        for r, row in enumerate(group.rows.tolist()):
            ids = [i for i in group.indices[r].tolist() if i != plan.n_kv_blocks]
            assert ids == sorted(set(ids))
            if shared:
                ids = [i for s, i in enumerate(ids) if mask is None or mask[r, :, s * bs:(s + 1) * bs].any()]
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
    # the global rows read every key block: one shared window (keys read as a view, not gathered)
    assert (widest.band, widest.band_step) == (0, 0)
    # padding rows to their group's width costs little: computed tiles within 10% of the active ones
    assert plan.computed_fraction <= 1.1 * layout.block_density


def test_sliding_window_interior_rows_form_one_band_that_shares_its_tile_mask():
    pattern = make_pattern("sliding_window", window=100)
    ctx = MaskContext.for_length(1000)
    plan = static_plan(pattern, ctx, 64, "cpu")
    bands = [g for g in plan.groups if g.band is not None and g.band_step == 1]
    assert len(bands) == 1
    band = bands[0]
    rows, width = band.rows, band.slots
    assert rows.numel() >= 8 and torch.equal(rows, torch.arange(int(rows[0]), int(rows[-1]) + 1))
    expected = band.band + torch.arange(rows.numel())[:, None] + torch.arange(width)[None, :]
    assert torch.equal(band.indices, expected), "row i reads blocks band + i .. band + i + K - 1"
    assert band.tile_mask.stride(0) == 0, "one tile mask, expanded over the band's rows"
    # the last block is partial (1000 = 15 * 64 + 40): it must not be in a band
    assert all((int(g.rows[-1]) + 1) * 64 <= 1000 for g in bands)


@pytest.mark.parametrize("length", [1024, 1000])
def test_sliding_window_edge_rows_share_one_key_window(length):
    """The rows at either end of a sliding window read fewer blocks than the interior; consecutive ones read one
    shared span of key blocks (band_step 0), each row with its own mask, no wider than the band's K. Only a
    partial last query block stays gathered."""
    pattern = make_pattern("sliding_window", window=100)
    ctx = MaskContext.for_length(length)
    plan = static_plan(pattern, ctx, 64, "cpu")
    layout = block_layout(pattern, ctx, 64)
    band = next(g for g in plan.groups if g.band is not None and g.band_step == 1)
    shared = [g for g in plan.groups if g.band is not None and g.band_step == 0]
    assert [g.rows.tolist() for g in shared] == [[0, 1], [13, 14] if length == 1000 else [14, 15]]
    for group in shared:
        span = torch.arange(group.band, group.band + group.slots)
        assert group.slots <= band.slots and torch.equal(group.indices, span.expand(group.rows.numel(), -1))
        for row in group.rows.tolist():  # every active tile of the row is in the span
            assert set(torch.nonzero(layout.active[row]).view(-1).tolist()) <= set(span.tolist())
        assert group.tile_mask.stride(0) != 0, "each row keeps its own tile mask"
        assert not torch.equal(group.tile_mask[0], group.tile_mask[1])
    gathered = [g.rows.tolist() for g in plan.groups if g.band is None]
    assert gathered == ([[15]] if length == 1000 else []), "only the partial last query block is gathered"
    assert sorted(torch.cat([g.rows for g in plan.groups]).tolist()) == list(range(16))


def test_patterns_with_global_or_random_blocks_have_no_band_where_rows_differ():
    ctx = MaskContext.for_length(1024)
    plan = static_plan(make_pattern("bigbird", block_size=64), ctx, 64, "cpu")
    sliding = [g for g in plan.groups if g.band is not None and g.band_step == 1]
    assert not sliding, "random blocks: rows don't read consecutive windows"
