"""Every pattern's mask equals the formula that defines it; block layouts agree with the masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_sparse.patterns import (
    BigBird,
    Local2D,
    MaskContext,
    RandomBlocks,
    SlidingWindow,
    Strided,
    allowed_matrix,
    block_layout,
    density,
    make_pattern,
    pattern_from_dict,
    pattern_names,
)
from tests.helpers.formulas import formula

FORMULA_CASES = [
    ("dense", {}),
    ("sliding_window", {"window": 1}),
    ("sliding_window", {"window": 5}),
    ("block_local", {"block_size": 4}),
    ("block_local", {"block_size": 16}),
    ("strided", {"stride": 4, "window": 1}),
    ("strided", {"stride": 7, "window": 0}),
    ("dilated", {"window": 3, "dilation": 2}),
    ("dilated", {"window": 2, "dilation": 5}),
]
LENGTHS = [1, 7, 33, 130]


@pytest.mark.parametrize("name,options", FORMULA_CASES)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_global", [0, 2])
def test_mask_equals_formula(name, options, length, causal, num_global):
    pattern = make_pattern(name, num_global=num_global, **options)
    got = allowed_matrix(pattern, MaskContext.for_length(length, causal=causal)).numpy()
    want = formula(name, length, causal=causal, num_global=num_global, **options)
    np.testing.assert_array_equal(got, want)


def test_longformer_is_window_plus_one_global_token():
    got = allowed_matrix(make_pattern("longformer", window=3), MaskContext.for_length(40)).numpy()
    np.testing.assert_array_equal(got, formula("sliding_window", 40, window=3, num_global=1))


@pytest.mark.parametrize("grid,prefix,window", [((4, 5), 1, 1), ((6, 6), 2, 2), ((3, 7), 0, 1)])
def test_local_2d_equals_formula(grid, prefix, window):
    length = grid[0] * grid[1] + prefix
    pattern = Local2D(window=window, grid=grid, num_prefix=prefix)
    got = allowed_matrix(pattern, MaskContext.for_length(length)).numpy()
    np.testing.assert_array_equal(got, formula("local_2d", length, grid=grid, num_prefix=prefix, window=window))


def test_local_2d_takes_grid_from_context_and_infers_a_square_grid():
    pattern = Local2D(window=1)
    from_model = allowed_matrix(pattern, MaskContext.for_length(21, image_grid=(4, 5), num_prefix=1)).numpy()
    np.testing.assert_array_equal(from_model, formula("local_2d", 21, grid=(4, 5), num_prefix=1, window=1))
    # a larger image (interpolated positions): 1 + 8*8 tokens no longer fit (4, 5) -> square 8x8 grid
    bigger = allowed_matrix(pattern, MaskContext.for_length(65, image_grid=(4, 5), num_prefix=1)).numpy()
    np.testing.assert_array_equal(bigger, formula("local_2d", 65, grid=(8, 8), num_prefix=1, window=1))
    with pytest.raises(ValueError, match="23 tokens"):
        allowed_matrix(pattern, MaskContext.for_length(23, image_grid=(4, 5), num_prefix=1))


@pytest.mark.parametrize("name,options", FORMULA_CASES + [("bigbird", {"block_size": 4}), ("random", {"block_size": 3})])
@pytest.mark.parametrize("causal", [False, True])
def test_offset_rows_equal_rows_of_the_full_matrix(name, options, causal):
    """Decode steps (one query at absolute position kv_len-1) and chunks see the same pattern rows."""
    pattern = make_pattern(name, num_global=1, **options)
    length = 45
    full = allowed_matrix(pattern, MaskContext.for_length(length, causal=causal)).numpy()
    last = allowed_matrix(pattern, MaskContext(1, length, length - 1, causal=causal)).numpy()
    chunk = allowed_matrix(pattern, MaskContext(6, length, length - 6, causal=causal)).numpy()
    np.testing.assert_array_equal(last, full[-1:])
    np.testing.assert_array_equal(chunk, full[-6:])


@pytest.mark.parametrize("name,options", FORMULA_CASES + [("bigbird", {"block_size": 8}), ("random", {"block_size": 8})])
@pytest.mark.parametrize("length,block", [(1, 4), (37, 8), (100, 16), (129, 32)])
@pytest.mark.parametrize("causal", [False, True])
def test_block_layout_agrees_with_mask(name, options, length, block, causal):
    pattern = make_pattern(name, **options)
    ctx = MaskContext.for_length(length, causal=causal)
    allowed = allowed_matrix(pattern, ctx).numpy()
    layout = block_layout(pattern, ctx, block)
    n = -(-length // block)
    assert tuple(layout.active.shape) == (n, n)
    for qb in range(n):
        for kb in range(n):
            tile = allowed[qb * block:(qb + 1) * block, kb * block:(kb + 1) * block]
            assert bool(layout.active[qb, kb]) == bool(tile.any())
            assert bool(layout.full[qb, kb]) == bool(tile.all())


def _random_blocks(pattern, length, causal):
    ctx = MaskContext.for_length(length, causal=causal)
    allowed = allowed_matrix(pattern, ctx).numpy()
    bs = pattern.block_size
    n = -(-length // bs)
    blocks = np.zeros((n, n), dtype=bool)
    for qb in range(n):
        for kb in range(n):
            tile = allowed[qb * bs:(qb + 1) * bs, kb * bs:(kb + 1) * bs]
            assert tile.all() or not tile.any() or causal, "random patterns are block-structured"
            blocks[qb, kb] = tile.any()
    return blocks


def test_random_is_reproducible_block_structured_and_seed_dependent():
    a = _random_blocks(RandomBlocks(num_random=3, block_size=8, seed=1), 160, causal=False)
    b = _random_blocks(RandomBlocks(num_random=3, block_size=8, seed=1), 160, causal=False)
    c = _random_blocks(RandomBlocks(num_random=3, block_size=8, seed=2), 160, causal=False)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert (a.sum(1) == 3).all()


def test_random_causal_never_selects_future_blocks_and_fills_the_past():
    blocks = _random_blocks(RandomBlocks(num_random=2, block_size=8, seed=0), 160, causal=True)
    assert not np.triu(blocks, k=1).any()
    counts = blocks.sum(1)
    np.testing.assert_array_equal(counts, np.minimum(np.arange(len(counts)) + 1, 2))


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_has_window_global_and_distinct_random_blocks(causal):
    pattern = BigBird(block_size=8, num_window_blocks=3, num_global_blocks=2, num_random_blocks=3, seed=4)
    blocks = _random_blocks(pattern, 8 * 20, causal=causal)
    n = blocks.shape[0]
    assert blocks[:2].all() if not causal else blocks[:2, :2][np.tril_indices(2)].all()
    assert blocks[:, :2][2:].all()
    for qb in range(2, n):
        window = {qb - 1, qb} | ({qb + 1} if (qb + 1 < n and not causal) else set())
        assert all(blocks[qb, kb] for kb in window)
        expected = len(window | {0, 1}) + min(3, (qb + 1 if causal else n) - len(window | {0, 1}))
        assert blocks[qb].sum() == expected
    if causal:
        assert not np.triu(blocks, k=1).any()


def test_union_and_intersection():
    a, b = SlidingWindow(window=2), Strided(stride=5, window=0)
    ctx = MaskContext.for_length(50)
    np.testing.assert_array_equal(
        allowed_matrix(a | b, ctx).numpy(), allowed_matrix(a, ctx).numpy() | allowed_matrix(b, ctx).numpy()
    )
    np.testing.assert_array_equal(
        allowed_matrix(a & b, ctx).numpy(), allowed_matrix(a, ctx).numpy() & allowed_matrix(b, ctx).numpy()
    )
    assert pattern_from_dict((a | b).to_dict()) == a | b


def test_density_matches_counting():
    pattern = SlidingWindow(window=4)
    assert density(pattern, MaskContext.for_length(100)) == pytest.approx(formula("sliding_window", 100, window=4).mean())


@pytest.mark.parametrize("name", [n for n in pattern_names() if n not in ("union", "intersection")])
def test_every_pattern_round_trips_through_its_dict(name):
    pattern = make_pattern(name, **({"grid": (3, 4)} if name == "local_2d" else {}))
    assert pattern_from_dict(pattern.to_dict()) == pattern


def test_unknown_pattern_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown sparse pattern 'slidng'.*sliding_window"):
        make_pattern("slidng")


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("sliding_window", {"window": 0}, "window must be >= 1, got 0"),
        ("sliding_window", {"window": -3}, "window must be >= 1, got -3"),
        ("block_local", {"block_size": 0}, "block_size must be >= 1, got 0"),
        ("bigbird", {"block_size": -1}, "block_size must be >= 1, got -1"),
        ("random", {"num_random": 0}, "num_random must be >= 1"),
        ("strided", {"stride": 0}, "stride must be >= 1"),
        ("dilated", {"dilation": 0}, "dilation must be >= 1"),
        ("sliding_window", {"num_global": -1}, "num_global must be >= 0"),
    ],
)
def test_bad_values_raise_value_error_naming_the_value(name, options, match):
    with pytest.raises(ValueError, match=match):
        make_pattern(name, **options)


def test_wrong_type_and_foreign_options_raise_type_error():
    with pytest.raises(TypeError, match=r"window must be an int, got 2.5"):
        make_pattern("sliding_window", window=2.5)
    with pytest.raises(TypeError, match=r"'sliding_window' got unexpected option\(s\) stride; it takes: .*window"):
        make_pattern("sliding_window", stride=4)


def test_mask_functions_work_on_other_devices_and_scalar_indices():
    pattern = BigBird(block_size=4)
    ctx = MaskContext.for_length(40)
    mod = pattern.mask_mod(ctx)
    full = allowed_matrix(pattern, ctx)
    zero = torch.tensor(0)
    assert bool(mod(zero, zero, torch.tensor(13), torch.tensor(2))) == bool(full[13, 2])
