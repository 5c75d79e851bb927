"""2-D local attention for vision transformers: patches attend patches within a Chebyshev radius."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .base import MaskContext, MaskMod, Pattern, check_int
from .registry import register_pattern


def _scaled_grid(base: tuple[int, int], n_patches: int) -> tuple[int, int] | None:
    """``(k·r, k·c)`` with ``k²·r·c == n_patches`` for the reduced aspect ratio ``r:c`` of ``base``, or ``None``."""
    step = math.gcd(*base)
    rows, cols = base[0] // step, base[1] // step
    scale_sq, rest = divmod(max(n_patches, 0), rows * cols)
    scale = math.isqrt(scale_sq)
    if rest or scale < 1 or scale * scale != scale_sq:
        return None
    return rows * scale, cols * scale


@register_pattern
@dataclass(frozen=True)
class Local2D(Pattern):
    """Patch tokens on a ``rows × cols`` grid attend patches within Chebyshev distance ``window``;
    the ``num_prefix`` tokens before the grid ([CLS], distillation) are global.

    ``grid=None`` takes the grid from the model (image size / patch size); if a call's length does not fit
    that grid (e.g. a larger image with interpolated positions) the grid is inferred from the length as the
    model grid scaled by the same factor on both sides (e.g. 28×28 for a 224-px ViT-B/16 run at 448 px,
    16×32 for an 8×16 model grid at twice the size), else as a square grid. Inputs of another aspect ratio
    need ``grid=`` or :func:`hf_sparse.extend_positions` with ``image_size=`` (then the model grid fits).
    ``num_prefix=None`` takes the model's count of prefix tokens (1 for ViT, 2 for DeiT).
    """

    name: ClassVar[str] = "local_2d"
    window: int = 2
    grid: tuple[int, int] | None = None
    num_prefix: int | None = None

    def _validate(self) -> None:
        check_int(self.name, "window", self.window, minimum=1)
        if self.grid is not None:
            grid = tuple(self.grid)
            if len(grid) != 2:
                raise ValueError(f"local_2d: grid must be (rows, cols), got {self.grid!r}")
            for value in grid:
                check_int(self.name, "grid entries", value, minimum=1)
            object.__setattr__(self, "grid", grid)
        if self.num_prefix is not None:
            check_int(self.name, "num_prefix", self.num_prefix, minimum=0)

    @property
    def needs_image_grid(self) -> bool:
        return self.grid is None

    def resolve(self, ctx: MaskContext) -> tuple[tuple[int, int], int]:
        """The ``(grid, num_prefix)`` used for a call of ``ctx.kv_len`` tokens."""
        prefix = self.num_prefix if self.num_prefix is not None else (ctx.num_prefix if ctx.num_prefix is not None else 1)
        n_patches = ctx.kv_len - prefix
        for grid in (self.grid, ctx.image_grid):
            if grid is not None and grid[0] * grid[1] == n_patches:
                return grid, prefix
        if self.grid is None:
            for base in (ctx.image_grid, (1, 1)):  # the model grid scaled evenly, else a square grid
                scaled = _scaled_grid(base, n_patches) if base is not None else None
                if scaled is not None:
                    return scaled, prefix
        expected = self.grid or ctx.image_grid
        raise ValueError(
            f"local_2d: a sequence of {ctx.kv_len} tokens with {prefix} prefix token(s) does not fit the patch grid "
            f"{expected} (nor that grid scaled evenly, nor a square grid); pass grid=(rows, cols) matching the "
            "input, or resize the model with hf_sparse.extend_positions(model, image_size=...)"
        )

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        (_, cols), prefix = self.resolve(ctx)
        w = self.window

        def mask(b, h, q_idx, kv_idx):
            qp, kp = q_idx - prefix, kv_idx - prefix
            near = ((qp // cols - kp // cols).abs() <= w) & ((qp % cols - kp % cols).abs() <= w)
            return near | (qp < 0) | (kp < 0)

        return mask
