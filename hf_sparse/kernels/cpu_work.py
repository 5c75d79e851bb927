"""What the fused CPU kernels run on: PyTorch's private flash-attention operators, whether they apply to a
call, and :class:`GroupWork`, one plan group's share of the call (its rows, key blocks and mask).

The operators are private (``aten::_scaled_dot_product_flash_attention_for_cpu`` and its backward), so
:func:`available` guards them: without them (or with dropout, a bias that needs a gradient, or off CPU)
the block-sparse kernel takes the plain autograd path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .plan import TileMaskRecipe, additive

FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
FLASH_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

#: Gathered keys+values (and, in backward, their gradients) materialized at once stay under this many bytes:
#: the work is chunked over query-block rows, so the transient copies stay small even at 8k+ tokens.
CHUNK_BYTES = 16 << 20


def available(query: torch.Tensor, dropout_p: float, dim_v: int, bias_needs_grad: bool = False) -> bool:
    """Whether the fused path applies: CPU, no dropout, supported dtype, equal q/v head dims, and no additive
    bias that needs a gradient (e.g. T5's learned position bias while training: this function returns none)."""
    return (
        FLASH is not None and FLASH_BACKWARD is not None and query.device.type == "cpu" and dropout_p == 0.0
        and query.dtype in _DTYPES and query.shape[-1] == dim_v and not bias_needs_grad
    )


@dataclass(frozen=True)
class GroupWork:
    """One plan group for :func:`~hf_sparse.kernels.cpu_flash.fused_forward` (inference, or the forward of
    :class:`~hf_sparse.kernels.cpu_flash.GatheredFlashAttention`) and that function's backward.

    Attributes:
        rows: ``[nr]`` query-block ids.
        slots: ``K``, the key blocks each row reads.
        index: ``[B*H*nr*K]`` flat key-block ids ``(b * H + h) * nk + block``, row-major over ``[B*H, nr, K]``, for
            gathered groups; ``None`` for bands, which read their keys as views (training keeps the works until
            backward: a band's table would be held per layer for nothing).
        mask: ``[1 or B*H, nr, bs, K*bs]`` mask (bands may also take ``[B, nr, bs or 1, K*bs]``, one per batch
            row for all heads), boolean (``True`` = allowed) or additive in the query dtype, or
            the :class:`~hf_sparse.kernels.plan.TileMaskRecipe` of a band's or shared window's boolean mask (built
            when the group runs, see :meth:`tile_mask`), or ``None``. Boolean masks become additive (what
            PyTorch's fused kernel takes) only for the call at hand (:func:`additive`), so no float copy of a
            plan's masks outlives it.
        empty: ``[1 or B*H, nr, bs, 1]`` bool (bands: or ``[B, ...]``), rows whose output is zero, or ``None``.
        band: the group's first key block if it is a band (:attr:`~hf_sparse.kernels.plan.PlanGroup.band`):
            its keys and values are read as overlapping strided views, without gathering.
        band_step: key blocks the band's window moves per row (:attr:`~hf_sparse.kernels.plan.PlanGroup.band_step`):
            ``1``, or ``0`` for a shared window (one key view for all rows, each row its own mask).
    """

    rows: torch.Tensor
    slots: int
    index: torch.Tensor | None
    mask: torch.Tensor | TileMaskRecipe | None
    empty: torch.Tensor | None
    band: int | None = None
    band_step: int = 1
    _built: dict = field(default_factory=dict, compare=False, repr=False)

    def cached(self, key: object, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``build()``, made once per pass over the group (kept until :meth:`release`)."""
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def tile_mask(self) -> torch.Tensor | None:
        """``mask`` as a tensor; a recipe is built on first use and kept until :meth:`release`."""
        if not isinstance(self.mask, TileMaskRecipe):
            return self.mask
        return self.cached("mask", lambda: self.mask.build()[None])

    def attn_mask(self, part: slice, dtype: torch.dtype) -> torch.Tensor | None:
        """The additive mask of the group positions ``part`` (gathered rows)."""
        return additive(self.part(self.tile_mask(), part), dtype)

    def release(self) -> None:
        """Drop the masks built for one pass over the group (training keeps the works until backward, which
        builds them again)."""
        self._built.clear()

    def chunks(self, n: int, block_bytes: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(positions in the group, their query-block ids)`` of row ranges whose gathered keys and values
        stay under :data:`CHUNK_BYTES`."""
        nr = self.rows.numel()
        per_row = 2 * n * self.slots * block_bytes
        step = max(1, min(nr, CHUNK_BYTES // max(per_row, 1)))
        for start in range(0, nr, step):
            part = slice(start, min(start + step, nr))
            yield part, self.rows[part]

    def part(self, x: torch.Tensor | None, part: slice) -> torch.Tensor | None:
        return None if x is None else x[:, part]
