"""Memory-lean training for the block-sparse kernel on CPU.

Autograd through ``index_select`` + SDPA keeps the gathered key/value blocks alive until backward: each
query block holds its own copy of ``K`` key blocks, i.e. ``K`` times the keys and values per layer. This
function saves only the un-gathered blocks, the output and the log-sum-exp, and re-gathers in backward
(a cheap copy), calling PyTorch's fused CPU flash-attention kernels directly. Those operators are private
(``aten::_scaled_dot_product_flash_attention_for_cpu`` and its backward), so :func:`available` guards them:
without them (or with dropout, or off CPU) the kernel takes the plain autograd path.
"""

from __future__ import annotations

import torch

_OPS = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def available(query: torch.Tensor, dropout_p: float, dim_v: int) -> bool:
    """Whether the fused path applies: CPU, no dropout, supported dtype, equal q/v head dims."""
    return (
        _OPS is not None and _BACKWARD is not None and query.device.type == "cpu" and dropout_p == 0.0
        and query.dtype in _DTYPES and query.shape[-1] == dim_v
    )


#: Gathered keys+values (and, in backward, their gradients) materialized at once stay under this many bytes:
#: the work is chunked over query-block rows, so the transient copies stay small even at 8k+ tokens.
CHUNK_BYTES = 16 << 20


def _chunks(q: torch.Tensor, index: torch.Tensor, k_blocks: torch.Tensor) -> list[slice]:
    """Ranges of query-block rows (``q``'s dim 1) whose gathered keys and values stay under :data:`CHUNK_BYTES`."""
    nq = q.shape[1]
    per_row = 2 * (index.numel() // nq) * k_blocks[0, 0, 0].numel() * k_blocks.element_size()
    step = max(1, min(nq, CHUNK_BYTES // max(per_row, 1)))
    return [slice(start, min(start + step, nq)) for start in range(0, nq, step)]


def _take(blocks: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Blocks ``flat = (b * H + h) * nk + block`` of ``blocks [B, H, nk, bs, D]`` (any strides): ``[M, bs, D]``."""
    heads, nk = blocks.shape[1], blocks.shape[2]
    bh = flat // nk
    return blocks[bh // heads, bh % heads, flat % nk]


def _gather(blocks: torch.Tensor, index: torch.Tensor, rows: slice, like: torch.Tensor) -> torch.Tensor:
    """Key blocks of query-block rows ``rows``: ``[N, nr, K*bs, D]``."""
    part = index.view(like.shape[0], like.shape[1], -1)[:, rows]
    return _take(blocks, part.reshape(-1)).view(like.shape[0], part.shape[1], -1, blocks.shape[-1])


def _mask_rows(mask: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    return None if mask is None else mask[:, rows]


class GatheredFlashAttention(torch.autograd.Function):
    """``out = flash(q, gather(k_blocks), gather(v_blocks), mask)`` with re-gathering in backward.

    Shapes: ``q [N = B*H, nq, bs, D]``, ``k_blocks / v_blocks [B, H, nk, bs, D]`` (views of the keys and
    values: saved without a copy), ``index [N*nq*K]`` (flat block ids ``(b * H + h) * nk + block``), ``mask`` additive in ``q``'s dtype, broadcastable to
    ``[N, nq, bs, K*bs]`` with a leading dim of 1 or ``N``, or ``None``. Work is done in chunks of
    query-block rows (dim 1).
    """

    @staticmethod
    def forward(ctx, q, k_blocks, v_blocks, index, mask, scale):
        outs, lses = [], []
        for rows in _chunks(q, index, k_blocks):
            k, v = _gather(k_blocks, index, rows, q), _gather(v_blocks, index, rows, q)
            out, lse = _OPS(q[:, rows], k, v, 0.0, False, attn_mask=_mask_rows(mask, rows), scale=scale)
            outs.append(out)
            lses.append(lse)
        out, lse = torch.cat(outs, dim=1), torch.cat(lses, dim=1)
        ctx.save_for_backward(q, k_blocks, v_blocks, index, out, lse)
        ctx.mask, ctx.scale = mask, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k_blocks, v_blocks, index, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_q = torch.empty_like(q)
        # fresh contiguous [B, H, nk, bs, D] gradients: the flat block ids index their first three dims
        grad_k_blocks = torch.zeros(k_blocks.shape, dtype=k_blocks.dtype, device=k_blocks.device)
        grad_v_blocks = torch.zeros(v_blocks.shape, dtype=v_blocks.dtype, device=v_blocks.device)
        flat_k, flat_v = grad_k_blocks.view(-1, *k_blocks.shape[3:]), grad_v_blocks.view(-1, *v_blocks.shape[3:])
        by_row = index.view(q.shape[0], q.shape[1], -1)
        for rows in _chunks(q, index, k_blocks):
            k, v = _gather(k_blocks, index, rows, q), _gather(v_blocks, index, rows, q)
            grad_q[:, rows], grad_k, grad_v = _BACKWARD(
                grad_out[:, rows], q[:, rows], k, v, out[:, rows], lse[:, rows], 0.0, False,
                attn_mask=_mask_rows(ctx.mask, rows), scale=ctx.scale,
            )
            part = by_row[:, rows].reshape(-1)
            flat_k.index_add_(0, part, grad_k.reshape(-1, *k_blocks.shape[3:]))
            flat_v.index_add_(0, part, grad_v.reshape(-1, *v_blocks.shape[3:]))
        return grad_q, grad_k_blocks, grad_v_blocks, None, None, None
