"""Pattern pictures are drawn from the same mask the kernels use."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from hf_sparse import viz
from hf_sparse.patterns import make_pattern
from tests.helpers.formulas import formula


@pytest.mark.parametrize("name,options,causal", [
    ("sliding_window", {"window": 3, "num_global": 1}, False),
    ("strided", {"stride": 5, "window": 1}, True),
    ("dilated", {"window": 2, "dilation": 3}, False),
])
def test_png_cells_match_the_mask(tmp_path, name, options, causal):
    path = tmp_path / f"{name}.png"
    drawn = viz.save_pattern_png(make_pattern(name, **options), path, 45, causal=causal)
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (45, 45)
    read_back = pixels[..., 0] < 0.5  # black = allowed
    want = formula(name, 45, causal=causal, **options)
    np.testing.assert_array_equal(read_back, want)
    np.testing.assert_array_equal(drawn, want)


def test_labelled_figure_and_gallery_are_written(tmp_path):
    viz.plot_pattern("bigbird", tmp_path / "one.png", 128, block_size=16)
    viz.plot_pattern_gallery(["sliding_window", make_pattern("local_2d", window=1)], tmp_path / "all.png", 50,
                             image_grid=(7, 7), block_size=8)
    for name in ("one.png", "all.png"):
        image = mpimg.imread(tmp_path / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_bad_length_is_rejected():
    with pytest.raises(ValueError, match="length must be a positive int, got 0"):
        viz.pattern_matrix("dense", 0)
