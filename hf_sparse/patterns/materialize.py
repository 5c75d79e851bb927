"""Turn a pattern's mask function into tensors: the token-level allowed matrix and the block layout.

Both are pure functions of (pattern, context, block size, device) and are cached, so a model with twelve
layers builds them once per sequence length.
"""

from __future__ import annotations

import functools

import torch

from .base import BlockLayout, MaskContext, MaskMod, Pattern

#: Mask evaluations per chunk when materializing: a mask function's int64 intermediates take 8 bytes per
#: element, so 1M elements keep the transient memory near 10-30 MB at any length.
CHUNK_ELEMENTS = 1 << 20


@functools.lru_cache(maxsize=256)
def bound_mask_mod(pattern: Pattern, ctx: MaskContext) -> MaskMod:
    """``pattern.mask_mod(ctx)``, cached (binding can build tables, e.g. for random blocks)."""
    return pattern.mask_mod(ctx)


def _evaluate_rows(mod: MaskMod, ctx: MaskContext, rows: range, device: torch.device) -> torch.Tensor:
    zero = torch.zeros((), dtype=torch.long, device=device)
    q_idx = torch.arange(rows.start, rows.stop, device=device)[:, None] + ctx.q_offset
    kv_idx = torch.arange(ctx.kv_len, device=device)[None, :]
    out = mod(zero, zero, q_idx, kv_idx)
    return out.expand(len(rows), ctx.kv_len)


def allowed_matrix(pattern: Pattern, ctx: MaskContext, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean ``[q_len, kv_len]`` matrix, ``True`` where query row ``i`` (absolute ``i + q_offset``) may
    attend key ``j``. Includes global tokens and, if ``ctx.causal``, causality. Cached per device."""
    return _allowed_matrix(pattern, ctx, str(torch.device(device)))


@functools.lru_cache(maxsize=16)
def _allowed_matrix(pattern: Pattern, ctx: MaskContext, device: str) -> torch.Tensor:
    mod = bound_mask_mod(pattern, ctx)
    dev = torch.device(device)
    step = max(1, CHUNK_ELEMENTS // max(ctx.kv_len, 1))
    chunks = [
        _evaluate_rows(mod, ctx, range(start, min(start + step, ctx.q_len)), dev)
        for start in range(0, ctx.q_len, step)
    ]
    if not chunks:
        return torch.zeros(0, ctx.kv_len, dtype=torch.bool, device=dev)
    return torch.cat(chunks, dim=0).contiguous()


def block_layout(
    pattern: Pattern, ctx: MaskContext, block_size: int, device: torch.device | str = "cpu"
) -> BlockLayout:
    """The :class:`BlockLayout` of ``pattern`` for ``ctx`` at ``block_size``; cached."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    return _block_layout(pattern, ctx, block_size, str(torch.device(device)))


@functools.lru_cache(maxsize=128)
def _block_layout(pattern: Pattern, ctx: MaskContext, block_size: int, device: str) -> BlockLayout:
    dev = torch.device(device)
    mod = bound_mask_mod(pattern, ctx)
    n_q = -(-ctx.q_len // block_size)
    n_kv = -(-ctx.kv_len // block_size)
    kv_pad = n_kv * block_size - ctx.kv_len
    active = torch.zeros(n_q, n_kv, dtype=torch.bool, device=dev)
    full = torch.zeros(n_q, n_kv, dtype=torch.bool, device=dev)
    blocks_per_chunk = max(1, CHUNK_ELEMENTS // max(ctx.kv_len * block_size, 1))
    for qb0 in range(0, n_q, blocks_per_chunk):
        qb1 = min(qb0 + blocks_per_chunk, n_q)
        rows = range(qb0 * block_size, min(qb1 * block_size, ctx.q_len))
        allowed = _evaluate_rows(mod, ctx, rows, dev)
        valid = torch.ones_like(allowed)
        q_pad = (qb1 - qb0) * block_size - len(rows)
        if q_pad or kv_pad:
            allowed = torch.nn.functional.pad(allowed, (0, kv_pad, 0, q_pad), value=False)
            valid = torch.nn.functional.pad(valid, (0, kv_pad, 0, q_pad), value=False)
        tiles = allowed.view(qb1 - qb0, block_size, n_kv, block_size)
        valid_tiles = valid.view(qb1 - qb0, block_size, n_kv, block_size)
        active[qb0:qb1] = tiles.any(dim=3).any(dim=1)
        full[qb0:qb1] = (tiles | ~valid_tiles).all(dim=3).all(dim=1)
    return BlockLayout(block_size=block_size, q_len=ctx.q_len, kv_len=ctx.kv_len, active=active, full=full)


def density(pattern: Pattern, ctx: MaskContext) -> float:
    """Fraction of (query, key) pairs the pattern allows in ``ctx`` (causality included if set)."""
    if ctx.q_len == 0 or ctx.kv_len == 0:
        return 0.0
    return float(allowed_matrix(pattern, ctx).float().mean())


def clear_caches() -> None:
    """Drop the pattern layer's cached masks, layouts and bound mask functions; :func:`hf_sparse.kernels.clear_caches`
    drops these and the kernels' caches (plans, ``BlockMask``), and is what callers use."""
    bound_mask_mod.cache_clear()
    _allowed_matrix.cache_clear()
    _block_layout.cache_clear()
