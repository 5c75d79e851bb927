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


#: Gathered keys+values materialized at once are kept under this many bytes by chunking over ``N``.
CHUNK_BYTES = 64 << 20


def _chunks(q: torch.Tensor, index: torch.Tensor, k_blocks: torch.Tensor):
    """Row ranges of ``N`` whose gathered keys and values stay under :data:`CHUNK_BYTES`."""
    n = q.shape[0]
    per_row = 2 * (index.numel() // n) * k_blocks[0].numel() * k_blocks.element_size()
    step = max(1, min(n, CHUNK_BYTES // max(per_row, 1)))
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def _gather(blocks: torch.Tensor, index: torch.Tensor, rows: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """Key blocks of rows ``rows`` of ``N``: ``[n, nq, K*bs, D]``."""
    n = rows[1] - rows[0]
    part = index.view(like.shape[0], -1)[rows[0]:rows[1]].reshape(-1)
    return blocks.index_select(0, part).view(n, like.shape[1], -1, blocks.shape[-1])


def _mask_rows(mask: torch.Tensor | None, rows: tuple[int, int]) -> torch.Tensor | None:
    return mask if mask is None or mask.shape[0] == 1 else mask[rows[0]:rows[1]]


class GatheredFlashAttention(torch.autograd.Function):
    """``out = flash(q, gather(k_blocks), gather(v_blocks), mask)`` with re-gathering in backward.

    Shapes: ``q [N, nq, bs, D]``, ``k_blocks / v_blocks [M, bs, D]`` (flat key blocks), ``index [N*nq*K]``
    (block ids into ``k_blocks``), ``mask`` additive in ``q``'s dtype, broadcastable to
    ``[N, nq, bs, K*bs]`` with a leading dim of 1 or ``N``, or ``None``. Work is done in chunks of ``N``.
    """

    @staticmethod
    def forward(ctx, q, k_blocks, v_blocks, index, mask, scale):
        outs, lses = [], []
        for rows in _chunks(q, index, k_blocks):
            k, v = _gather(k_blocks, index, rows, q), _gather(v_blocks, index, rows, q)
            out, lse = _OPS(q[rows[0]:rows[1]], k, v, 0.0, False, attn_mask=_mask_rows(mask, rows), scale=scale)
            outs.append(out)
            lses.append(lse)
        out, lse = torch.cat(outs), torch.cat(lses)
        ctx.save_for_backward(q, k_blocks, v_blocks, index, out, lse)
        ctx.mask, ctx.scale = mask, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k_blocks, v_blocks, index, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_q = torch.empty_like(q)
        grad_k_blocks, grad_v_blocks = torch.zeros_like(k_blocks), torch.zeros_like(v_blocks)
        flat = index.view(q.shape[0], -1)
        for rows in _chunks(q, index, k_blocks):
            a, b = rows
            k, v = _gather(k_blocks, index, rows, q), _gather(v_blocks, index, rows, q)
            grad_q[a:b], grad_k, grad_v = _BACKWARD(
                grad_out[a:b], q[a:b], k, v, out[a:b], lse[a:b], 0.0, False,
                attn_mask=_mask_rows(ctx.mask, rows), scale=ctx.scale,
            )
            part = flat[a:b].reshape(-1)
            grad_k_blocks.index_add_(0, part, grad_k.reshape(-1, *k_blocks.shape[1:]))
            grad_v_blocks.index_add_(0, part, grad_v.reshape(-1, *v_blocks.shape[1:]))
        return grad_q, grad_k_blocks, grad_v_blocks, None, None, None
