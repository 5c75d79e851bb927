"""Block-sparse plans: which key blocks each query block gathers, and the token mask inside those tiles.

A plan turns a pattern's :class:`~hf_sparse.patterns.BlockLayout` into the fixed-width index table the
block-sparse kernel gathers with. Every query-block row gathers the same number of slots ``K`` (the most
active tiles of any row); rows with fewer active tiles point their spare slots at an all-zero sentinel
block (index ``n_kv_blocks``) that the tile mask hides. Plans of fixed patterns are cached per
(pattern, context, block size, device); data-dependent patterns get a fresh plan per call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..patterns import BlockLayout, MaskContext, MaskMod, Pattern, block_layout, bound_mask_mod


@dataclass(frozen=True)
class BlockSparsePlan:
    """Gather table and tile mask of one pattern at one shape.

    Attributes:
        block_size: tile edge ``bs``.
        n_q_blocks / n_kv_blocks: ``ceil(Lq / bs)`` / ``ceil(Lk / bs)``.
        indices: ``[*P, n_q_blocks, K]`` int64 key-block ids per query block, ascending; ``n_kv_blocks``
            marks an empty slot. ``P`` is ``()`` for fixed patterns and ``(B, Hq)`` for dynamic ones.
        tile_mask: ``[*P, n_q_blocks, bs, K * bs]`` bool, ``True`` where the pattern allows the pair (pattern
            and sequence ends only, not the model's padding), or ``None`` when every gathered pair is allowed.
            Rows that would allow nothing (query rows past the end, rows the pattern leaves empty) allow
            their whole tile instead, so fused kernels never see an empty row.
        empty_rows: ``[*P, n_q_blocks, bs, 1]`` bool marking in-range rows the pattern leaves empty (their
            output must be zeroed), or ``None`` if there are none.
        computed_fraction: gathered tiles / all tiles (the work a kernel does relative to dense).
    """

    block_size: int
    n_q_blocks: int
    n_kv_blocks: int
    indices: torch.Tensor
    tile_mask: torch.Tensor | None
    empty_rows: torch.Tensor | None
    computed_fraction: float

    @property
    def gather_indices(self) -> torch.Tensor:
        """``indices`` with empty slots pointing at block 0 (hidden by the mask), for gathering."""
        return self.indices.masked_fill(self.indices == self.n_kv_blocks, 0)

    @property
    def slots(self) -> int:
        return self.indices.shape[-1]

    @property
    def per_head(self) -> bool:
        return self.indices.dim() == 4


def _indices(active: torch.Tensor, n_kv: int) -> torch.Tensor:
    """Active key blocks of each row first (ascending), padded with the sentinel ``n_kv``."""
    counts = active.sum(-1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    order = torch.argsort((~active).to(torch.int8), dim=-1, stable=True)[..., :width]
    slot = torch.arange(width, device=active.device)
    return torch.where(slot < counts[..., None], order, torch.full_like(order, n_kv))


def _tile_mask(mod: MaskMod, ctx: MaskContext, indices: torch.Tensor, bs: int, n_kv: int) -> torch.Tensor:
    """``[*P, nq, bs, K*bs]`` bool: pattern mask on the gathered tiles, False outside the sequences."""
    dev = indices.device
    nq, width = indices.shape[-2], indices.shape[-1]
    rows = torch.arange(nq * bs, device=dev).view(nq, 1, bs, 1)            # query row in the call
    cols = indices[..., None, None] * bs + torch.arange(bs, device=dev)     # [*P, nq, K, 1, bs]
    valid = (rows < ctx.q_len) & (cols < ctx.kv_len) & (indices[..., None, None] < n_kv)
    q_pos = (rows + ctx.q_offset).clamp(max=max(ctx.q_offset + ctx.q_len - 1, 0))
    kv_pos = cols.clamp(max=max(ctx.kv_len - 1, 0))
    if indices.dim() == 4:
        b = torch.arange(indices.shape[0], device=dev).view(-1, 1, 1, 1, 1, 1)
        h = torch.arange(indices.shape[1], device=dev).view(1, -1, 1, 1, 1, 1)
    else:
        b = h = torch.zeros((), dtype=torch.long, device=dev)
    allowed = mod(b, h, q_pos, kv_pos) & valid                               # [*P, nq, K, bs, bs]
    allowed = allowed.expand(*indices.shape, bs, bs)
    return allowed.transpose(-2, -3).reshape(*indices.shape[:-1], bs, width * bs)


def _plan(layout: BlockLayout, mod: MaskMod, ctx: MaskContext, bs: int) -> BlockSparsePlan:
    n_q, n_kv = layout.active.shape[-2], layout.active.shape[-1]
    indices = _indices(layout.active, n_kv)
    tile_mask = _tile_mask(mod, ctx, indices, bs, n_kv)
    row_any = tile_mask.any(dim=-1, keepdim=True)
    in_range = (torch.arange(n_q * bs, device=indices.device) < ctx.q_len).view(n_q, bs, 1)
    empty = ~row_any & in_range
    tile_mask = tile_mask | ~row_any
    computed = indices.shape[-1] * n_q / max(n_q * n_kv, 1)
    return BlockSparsePlan(
        bs, n_q, n_kv, indices, None if bool(tile_mask.all()) else tile_mask,
        empty if bool(empty.any()) else None, computed,
    )


def static_plan(pattern: Pattern, ctx: MaskContext, bs: int, device: torch.device | str) -> BlockSparsePlan:
    """The cached plan of a fixed pattern."""
    return _static_plan(pattern, ctx, bs, str(torch.device(device)))


@functools.lru_cache(maxsize=64)
def _static_plan(pattern: Pattern, ctx: MaskContext, bs: int, device: str) -> BlockSparsePlan:
    layout = block_layout(pattern, ctx, bs, device)
    return _plan(layout, bound_mask_mod(pattern, ctx), ctx, bs)


def dynamic_plan(mod: MaskMod, layout: BlockLayout, ctx: MaskContext) -> BlockSparsePlan:
    """The plan of a data-dependent pattern's binding for one call (``[B, Hq, nq, nk]`` layout)."""
    if layout.active.dim() != 4:
        raise ValueError(
            f"a dynamic pattern's layout must be [B, H, n_q_blocks, n_kv_blocks], got {tuple(layout.active.shape)}"
        )
    return _plan(layout, mod, ctx, layout.block_size)


def clear_plan_cache() -> None:
    _static_plan.cache_clear()
