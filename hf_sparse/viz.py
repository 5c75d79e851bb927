"""Pictures of patterns: the allowed matrix and the block layout, drawn from the same mask function the
kernels use. matplotlib is imported lazily (only when drawing)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import numpy as np

from .patterns import MaskContext, Pattern, allowed_matrix, as_pattern, block_layout


def _context(length: int, causal: bool, image_grid: tuple[int, int] | None, num_prefix: int | None) -> MaskContext:
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise ValueError(f"length must be a positive int, got {length!r}")
    return MaskContext.for_length(length, causal=causal, image_grid=image_grid, num_prefix=num_prefix)


def pattern_matrix(
    pattern: Pattern | str,
    length: int,
    *,
    causal: bool = False,
    image_grid: tuple[int, int] | None = None,
    num_prefix: int | None = None,
) -> np.ndarray:
    """Boolean ``[length, length]`` array, ``True`` where query row ``i`` may attend key column ``j``."""
    ctx = _context(length, causal, image_grid, num_prefix)
    return allowed_matrix(as_pattern(pattern), ctx).cpu().numpy()


def save_pattern_png(
    pattern: Pattern | str,
    path: str | os.PathLike,
    length: int,
    *,
    causal: bool = False,
    image_grid: tuple[int, int] | None = None,
    num_prefix: int | None = None,
) -> np.ndarray:
    """Write the allowed matrix as a PNG with exactly one pixel per (query, key) cell: black = allowed.
    Returns the matrix drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    matrix = pattern_matrix(pattern, length, causal=causal, image_grid=image_grid, num_prefix=num_prefix)
    plt.imsave(os.fspath(path), matrix.astype(np.float32), cmap="gray_r", vmin=0.0, vmax=1.0)
    return matrix


def plot_pattern(
    pattern: Pattern | str,
    path: str | os.PathLike,
    length: int,
    *,
    block_size: int | None = None,
    causal: bool = False,
    image_grid: tuple[int, int] | None = None,
    num_prefix: int | None = None,
    title: str | None = None,
) -> None:
    """A labelled figure: allowed cells in dark blue, the active tiles of the block layout shaded, the
    density of both in the title."""
    fig = _figure_for([(as_pattern(pattern), title)], length, block_size, causal, image_grid, num_prefix, cols=1)
    fig.savefig(os.fspath(path), dpi=120, bbox_inches="tight")
    _close(fig)


def plot_pattern_gallery(
    patterns: Sequence[Pattern | str],
    path: str | os.PathLike,
    length: int,
    *,
    block_size: int | None = None,
    causal: bool = False,
    image_grid: tuple[int, int] | None = None,
    num_prefix: int | None = None,
    cols: int = 4,
) -> None:
    """Several patterns side by side in one PNG (same length and block size)."""
    items = [(as_pattern(p), None) for p in patterns]
    fig = _figure_for(items, length, block_size, causal, image_grid, num_prefix, cols=cols)
    fig.savefig(os.fspath(path), dpi=110, bbox_inches="tight")
    _close(fig)


def _figure_for(items, length, block_size, causal, image_grid, num_prefix, cols):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = max(1, min(cols, len(items)))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    ctx = _context(length, causal, image_grid, num_prefix)
    for ax, (pattern, title) in zip(axes.flat, items, strict=False):
        allowed = allowed_matrix(pattern, ctx).cpu().numpy()
        label = title or pattern.describe()
        subtitle = f"density {allowed.mean():.1%}"
        if block_size:
            layout = block_layout(pattern, ctx, block_size)
            tiles = np.kron(layout.active.cpu().numpy(), np.ones((block_size, block_size)))[:length, :length]
            ax.imshow(tiles, cmap="Oranges", vmin=0, vmax=3, interpolation="nearest")
            subtitle += f", blocks {layout.block_density:.1%} @ {block_size}"
        ax.imshow(np.ma.masked_where(~allowed, allowed), cmap="Blues", vmin=0, vmax=1.2, interpolation="nearest")
        ax.set_title(textwrap.fill(label, 44) + "\n" + subtitle, fontsize=7)
        ax.set_xlabel("key position", fontsize=7)
        ax.set_ylabel("query position", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
