"""Block routing shared by the content-chosen patterns: pool, score, pick a fixed number of key blocks per
query-block row, and turn the pick into the ``(mask_mod, BlockLayout)`` binding every kernel consumes.

Conventions (those of :class:`~hf_sparse.patterns.BlockLayout`):

* query block ``qb`` holds the call's query rows ``qb*bs .. (qb+1)*bs - 1``; row ``r`` is absolute position
  ``q_offset + r``. Key block ``kb`` holds keys ``kb*bs .. (kb+1)*bs - 1``. The last blocks may be partial.
* a *block table* is a bool tensor ``[B, Hq, n_q_blocks, n_kv_blocks]``: ``True`` = the whole tile is kept
  (causality, if the call is causal, still removes ``kv > q`` inside it).
* every row keeps the same number of blocks, ``min(width, available)``, where
  ``width = max forced blocks of any row + k`` and ``available`` counts the key blocks a row may see
  (causal rows see no future block). Forced blocks (local window, global blocks) are always kept; the
  remaining slots go to the best-scoring blocks, ties broken by the lower block index. With global queries
  (``select_blocks(..., global_queries=True)``) the rows holding the global tokens keep every block they may
  see instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..patterns import BlockLayout, MaskContext, MaskMod


def n_blocks(length: int, block_size: int) -> int:
    return -(-length // block_size)


def pool_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean over each block of ``bs`` positions: ``[B, H, L, D] -> [B, H, ceil(L/bs), D]`` in float32
    (a partial last block is averaged over its real positions only)."""
    b, h, length, d = x.shape
    n = n_blocks(length, block_size)
    padded = torch.nn.functional.pad(x.float(), (0, 0, 0, n * block_size - length))
    sums = padded.view(b, h, n, block_size, d).sum(3)
    counts = block_counts(length, block_size, x.device)
    return sums / counts[:, None]


def block_counts(length: int, block_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[n_blocks]`` float: number of real positions in each block."""
    starts = torch.arange(n_blocks(length, block_size), device=device) * block_size
    return (length - starts).clamp(max=block_size).float()


def expand_kv_heads(x: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    """Repeat key heads ``[B, Hkv, ...]`` to ``[B, Hq, ...]`` (grouped-query attention)."""
    hkv = x.shape[1]
    if num_q_heads % hkv:
        raise ValueError(f"query heads ({num_q_heads}) must be a multiple of key/value heads ({hkv})")
    return x if hkv == num_q_heads else x.repeat_interleave(num_q_heads // hkv, dim=1)


@dataclass(frozen=True)
class RowGeometry:
    """Where each query block sits relative to the key blocks of one call.

    Attributes:
        allowed: ``[nq, nkv]`` bool, the key block may be chosen (not entirely in the future when causal).
        forced: ``[nq, nkv]`` bool, always kept: the local window and the global blocks.
        anchor: ``[nq]`` long, key block holding the block's last query row (its diagonal block).
        global_rows: ``[nq]`` bool, the query block holds one of the first ``num_global`` positions.
    """

    allowed: torch.Tensor
    forced: torch.Tensor
    anchor: torch.Tensor
    global_rows: torch.Tensor


def row_geometry(
    ctx: MaskContext, block_size: int, num_local_blocks: int, num_global: int, device: torch.device | str = "cpu"
) -> RowGeometry:
    """Allowed and forced key blocks of each query block of ``ctx``.

    Local window: the key blocks spanned by the query block's own positions, widened by
    ``num_local_blocks - 1`` blocks (to the past when causal, centred otherwise). Global blocks: those
    holding the first ``num_global`` tokens (as keys; as queries, :attr:`RowGeometry.global_rows`).
    """
    nq, nkv = n_blocks(ctx.q_len, block_size), n_blocks(ctx.kv_len, block_size)
    rows = torch.arange(nq, device=device)
    first = ctx.q_offset + rows * block_size
    last = ctx.q_offset + torch.clamp((rows + 1) * block_size, max=ctx.q_len) - 1
    first_kb = torch.div(first, block_size, rounding_mode="floor").clamp(max=nkv - 1)
    last_kb = torch.div(last, block_size, rounding_mode="floor").clamp(max=nkv - 1)
    kb = torch.arange(nkv, device=device)[None, :]
    if ctx.causal:
        allowed = kb * block_size <= last[:, None]
        lo, hi = first_kb - (num_local_blocks - 1), last_kb
    else:
        allowed = torch.ones(nq, nkv, dtype=torch.bool, device=device)
        lo, hi = first_kb - (num_local_blocks - 1) // 2, last_kb + num_local_blocks // 2
    forced = (kb >= lo[:, None]) & (kb <= hi[:, None])
    if num_global > 0:
        forced = forced | (kb * block_size < min(num_global, ctx.kv_len))
    return RowGeometry(allowed=allowed, forced=forced & allowed, anchor=last_kb, global_rows=first < num_global)


def select_blocks(scores: torch.Tensor, geometry: RowGeometry, k: int, global_queries: bool = False) -> torch.Tensor:
    """Block table ``[B, H, nq, nkv]`` keeping the forced blocks plus the best ``k`` (more where a row has
    fewer forced blocks than others, so every row keeps the same count); ``scores`` ``[B, H, nq, nkv]``.
    With ``global_queries`` the :attr:`RowGeometry.global_rows` keep every allowed block instead.

    Deterministic: a stable descending sort breaks ties by the lower key-block index.
    """
    nkv = scores.shape[-1]
    forced_max = int(geometry.forced.sum(-1).max()) if geometry.forced.numel() else 0
    width = min(nkv, forced_max + k)
    s = torch.nan_to_num(scores.detach().float(), nan=float("-inf"))
    s = s.masked_fill(geometry.forced, float("inf")).masked_fill(~geometry.allowed, float("-inf"))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :width]
    table = torch.zeros(s.shape, dtype=torch.bool, device=s.device).scatter_(-1, order, True)
    if global_queries:
        table[..., geometry.global_rows, :] = True
    return table & geometry.allowed


def table_mask_mod(table: torch.Tensor, ctx: MaskContext, block_size: int) -> MaskMod:
    """Token-level mask of a block table: ``(b, h, q_idx, kv_idx)`` -> kept tile, and ``kv <= q`` if causal.

    ``b`` and ``h`` index the table's batch and query-head axes; all four arguments broadcast.
    """
    nq, nkv = table.shape[-2], table.shape[-1]
    offset, causal = ctx.q_offset, ctx.causal

    def mask(b, h, q_idx, kv_idx):
        qb = torch.div(q_idx - offset, block_size, rounding_mode="floor").clamp(0, nq - 1)
        kb = torch.div(kv_idx, block_size, rounding_mode="floor").clamp(0, nkv - 1)
        out = table[b, h, qb, kb]
        return out & (kv_idx <= q_idx) if causal else out

    return mask


def _regroup(table: torch.Tensor, axis: int, length: int, src: int, dst: int, reduce_all: bool) -> torch.Tensor:
    """Re-tile one axis of a block table from blocks of ``src`` to blocks of ``dst`` positions."""
    tokens = table.repeat_interleave(src, dim=axis).narrow(axis, 0, length)
    n = n_blocks(length, dst)
    pad = n * dst - length
    moved = tokens.movedim(axis, -1)
    if pad:
        moved = torch.nn.functional.pad(moved, (0, pad), value=reduce_all)
    grouped = moved.reshape(*moved.shape[:-1], n, dst)
    out = grouped.all(-1) if reduce_all else grouped.any(-1)
    return out.movedim(-1, axis)


def table_layout(table: torch.Tensor, ctx: MaskContext, block_size: int, tile_size: int) -> BlockLayout:
    """The :class:`BlockLayout` at ``tile_size`` of a block table chosen at ``block_size``.

    ``active`` covers every pair the table's mask allows; ``full`` marks tiles where every in-range pair is
    allowed (kept everywhere and, if causal, entirely at or below the diagonal).
    """
    active, full = table, table
    if tile_size != block_size:
        active = _regroup(_regroup(table, -2, ctx.q_len, block_size, tile_size, False),
                          -1, ctx.kv_len, block_size, tile_size, False)
        full = _regroup(_regroup(table, -2, ctx.q_len, block_size, tile_size, True),
                        -1, ctx.kv_len, block_size, tile_size, True)
    if ctx.causal:
        nq, nkv = active.shape[-2], active.shape[-1]
        dev = table.device
        rows = torch.arange(nq, device=dev)
        first = ctx.q_offset + rows * tile_size
        last = ctx.q_offset + torch.clamp((rows + 1) * tile_size, max=ctx.q_len) - 1
        kv_start = torch.arange(nkv, device=dev) * tile_size
        kv_end = torch.clamp(kv_start + tile_size, max=ctx.kv_len) - 1
        active = active & (kv_start[None, :] <= last[:, None])
        full = full & (kv_end[None, :] <= first[:, None])
    return BlockLayout(block_size=tile_size, q_len=ctx.q_len, kv_len=ctx.kv_len,
                       active=active.contiguous(), full=full.contiguous())


def bind_table(table: torch.Tensor, ctx: MaskContext, block_size: int, tile_size: int) -> tuple[MaskMod, BlockLayout]:
    """``(mask_mod, layout)`` of a block table: what a dynamic pattern's ``bind_dynamic`` returns."""
    return table_mask_mod(table, ctx, block_size), table_layout(table, ctx, block_size, tile_size)


def block_mass(probs: torch.Tensor, block_size: int, row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Block-pooled attention: ``[B, H, Lq, Lk]`` probabilities -> ``[B, H, nq, nkv]``, the attention mass
    each key block receives, averaged over the (weighted) query rows of each query block. Rows of a block
    sum to 1 when the probabilities' rows do; a block without weighted rows is all zero.

    ``row_weight`` ``[B, Lq]`` (e.g. 0 for padding queries) defaults to 1 for every row.
    """
    b, h, lq, lk = probs.shape
    nq, nkv = n_blocks(lq, block_size), n_blocks(lk, block_size)
    per_key_block = torch.nn.functional.pad(probs.float(), (0, nkv * block_size - lk))
    per_key_block = per_key_block.view(b, h, lq, nkv, block_size).sum(-1)
    weight = torch.ones(b, lq, device=probs.device) if row_weight is None else row_weight.float()
    weight = torch.nn.functional.pad(weight, (0, nq * block_size - lq)).view(b, 1, nq, block_size, 1)
    rows = torch.nn.functional.pad(per_key_block, (0, 0, 0, nq * block_size - lq)).view(b, h, nq, block_size, nkv)
    return (rows * weight).sum(3) / weight.sum(3).clamp(min=1e-12)
