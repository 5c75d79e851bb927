"""Memory-lean training for the block-sparse kernel on CPU.

Autograd through ``index_select`` + SDPA keeps the gathered key/value blocks alive until backward: each
query block holds its own copy of ``K`` key blocks, i.e. ``K`` times the keys and values per layer. The
function here saves only what dense SDPA saves: the queries, keys and values as the model passed them
(views, no copies), the output and the log-sum-exp. It re-gathers blocks in backward (a cheap copy) and
calls PyTorch's fused CPU flash-attention kernels directly. The output is written straight into a
``[B, L, H, D]`` tensor, the layout the model's output projection reads, so the model's
``transpose(1, 2).contiguous()`` is free and the projection saves the same tensor instead of a copy.
Those operators are private (``aten::_scaled_dot_product_flash_attention_for_cpu`` and its backward), so
:func:`available` guards them: without them (or with dropout, a bias that needs a gradient, or off CPU)
the kernel takes the plain autograd path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

_OPS = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

#: Gathered keys+values (and, in backward, their gradients) materialized at once stay under this many bytes:
#: the work is chunked over query-block rows, so the transient copies stay small even at 8k+ tokens.
CHUNK_BYTES = 16 << 20


def available(query: torch.Tensor, dropout_p: float, dim_v: int, bias_needs_grad: bool = False) -> bool:
    """Whether the fused path applies: CPU, no dropout, supported dtype, equal q/v head dims, and no additive
    bias that needs a gradient (e.g. T5's learned position bias while training: this function returns none)."""
    return (
        _OPS is not None and _BACKWARD is not None and query.device.type == "cpu" and dropout_p == 0.0
        and query.dtype in _DTYPES and query.shape[-1] == dim_v and not bias_needs_grad
    )


@dataclass(frozen=True)
class GroupWork:
    """One plan group for :class:`GatheredFlashAttention`.

    Attributes:
        rows: ``[nr]`` query-block ids.
        index: ``[B*H*nr*K]`` flat key-block ids ``(b * H + h) * nk + block``, row-major over ``[B*H, nr, K]``.
        mask: additive ``[1 or B*H, nr, bs, K*bs]`` mask in the query dtype, or ``None``.
        empty: ``[1 or B*H, nr, bs, 1]`` bool, rows whose output is zero, or ``None``.
    """

    rows: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor | None
    empty: torch.Tensor | None

    def chunks(self, n: int, block_bytes: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(positions in the group, their query-block ids)`` of row ranges whose gathered keys and values
        stay under :data:`CHUNK_BYTES`."""
        nr = self.rows.numel()
        per_row = 2 * (self.index.numel() // nr) * block_bytes
        step = max(1, min(nr, CHUNK_BYTES // max(per_row, 1)))
        for start in range(0, nr, step):
            part = slice(start, min(start + step, nr))
            yield part, self.rows[part]

    def part(self, x: torch.Tensor | None, part: slice) -> torch.Tensor | None:
        return None if x is None else x[:, part]


def _take(blocks: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Blocks ``flat = (b * H + h) * nk + block`` of ``blocks [B, H, nk, bs, D]`` (any strides): ``[M, bs, D]``."""
    heads, nk = blocks.shape[1], blocks.shape[2]
    bh = flat // nk
    return blocks[bh // heads, bh % heads, flat % nk]


def _gather(blocks: torch.Tensor, work: GroupWork, part: slice, n: int) -> torch.Tensor:
    """Key/value blocks of the group positions ``part``: ``[N, nr, K*bs, D]``."""
    flat = work.index.view(n, work.rows.numel(), -1)[:, part]
    return _take(blocks, flat.reshape(-1)).view(n, flat.shape[1], -1, blocks.shape[-1])


def _span(ids: torch.Tensor) -> slice | torch.Tensor:
    """Ascending block ids as a ``slice`` when they are consecutive (views instead of index copies)."""
    first, last = int(ids[0]), int(ids[-1])
    return slice(first, last + 1) if last - first + 1 == ids.numel() else ids


def _rows(x: torch.Tensor, ids: torch.Tensor, bs: int) -> torch.Tensor:
    """Query blocks ``ids`` of ``x [B, H, L, D]`` as ``[B*H, nr, bs, D]`` (a view when they are consecutive
    and inside ``L``). ``L`` may end mid-block: the missing rows repeat the last token; their outputs are cut
    off and their gradients are zero."""
    batch, heads, length, dim = x.shape
    span = _span(ids)
    if isinstance(span, slice) and span.stop * bs <= length:
        return x[:, :, span.start * bs:span.stop * bs].reshape(batch * heads, ids.numel(), bs, dim)
    tokens = (ids.view(-1, 1) * bs + torch.arange(bs, device=ids.device)).view(-1).clamp(max=length - 1)
    return x.index_select(2, tokens).view(batch * heads, ids.numel(), bs, dim)


def _blocks_view(x: torch.Tensor, heads: int, bs: int) -> torch.Tensor:
    """``[B, nq*bs, H, D]`` -> a ``[B, H, nq, bs, D]`` view."""
    batch, length, _, dim = x.shape
    return x.view(batch, length // bs, bs, heads, dim).permute(0, 3, 1, 2, 4)


class GatheredFlashAttention(torch.autograd.Function):
    """Block-sparse flash attention over all plan groups, with re-gathering in backward.

    Inputs: ``query [B, H, Lq, D]`` and ``k_blocks / v_blocks [B, H, nk, bs, D]`` as the model passed them
    (any strides; saved without a copy), ``works`` (one :class:`GroupWork` per group, covering every query
    block once), ``scale``, ``block_size``, ``nq`` (query blocks). Returns ``[B, nq*bs, H, D]`` contiguous (rows past ``Lq`` are
    padding); the log-sum-exp is kept as ``[B*H, nq, bs]``. Work is done in chunks of query-block rows.
    """

    @staticmethod
    def forward(ctx, query, k_blocks, v_blocks, works, scale, bs, nq):
        batch, heads = query.shape[:2]
        n = batch * heads
        out = query.new_zeros(batch, nq * bs, heads, v_blocks.shape[-1])
        out_blocks = _blocks_view(out, heads, bs)
        lse = None
        block_bytes = k_blocks[0, 0, 0].numel() * k_blocks.element_size()
        for work in works:
            for part, ids in work.chunks(n, block_bytes):
                k, v = _gather(k_blocks, work, part, n), _gather(v_blocks, work, part, n)
                o, l_part = _OPS(_rows(query, ids, bs), k, v, 0.0, False, attn_mask=work.part(work.mask, part),
                                 scale=scale)
                if work.empty is not None:
                    o = o.masked_fill(work.part(work.empty, part), 0.0)
                span = _span(ids)
                out_blocks[:, :, span] = o.view(batch, heads, *o.shape[1:])
                if lse is None:
                    lse = l_part.new_zeros(n, nq, bs)
                lse[:, span] = l_part
        ctx.save_for_backward(query, k_blocks, v_blocks, out, lse)
        ctx.works, ctx.scale, ctx.bs = works, scale, bs
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, k_blocks, v_blocks, out, lse = ctx.saved_tensors
        works, bs = ctx.works, ctx.bs
        grad_out = grad_out.contiguous()
        batch, heads, length, dim = query.shape
        n = batch * heads
        grad_blocks = _blocks_view(grad_out, heads, bs)
        out_blocks = _blocks_view(out, heads, bs)
        grad_q = torch.zeros(batch, heads, out.shape[1], dim, dtype=query.dtype, device=query.device)
        grad_q_blocks = grad_q.view(batch, heads, -1, bs, dim)
        # fresh contiguous [B, H, nk, bs, D] gradients: the flat block ids index their first three dims
        grad_k_blocks = torch.zeros(k_blocks.shape, dtype=k_blocks.dtype, device=k_blocks.device)
        grad_v_blocks = torch.zeros(v_blocks.shape, dtype=v_blocks.dtype, device=v_blocks.device)
        flat_k, flat_v = grad_k_blocks.view(-1, *k_blocks.shape[3:]), grad_v_blocks.view(-1, *v_blocks.shape[3:])
        block_bytes = k_blocks[0, 0, 0].numel() * k_blocks.element_size()
        for work in works:
            by_row = work.index.view(n, work.rows.numel(), -1)
            for part, ids in work.chunks(n, block_bytes):
                k, v = _gather(k_blocks, work, part, n), _gather(v_blocks, work, part, n)
                span = _span(ids)
                g = grad_blocks[:, :, span].reshape(n, ids.numel(), bs, -1)
                if work.empty is not None:
                    g = g.masked_fill(work.part(work.empty, part), 0.0)
                grad_q_part, grad_k, grad_v = _BACKWARD(
                    g, _rows(query, ids, bs), k, v, out_blocks[:, :, span].reshape(n, ids.numel(), bs, -1),
                    lse[:, span], 0.0, False, attn_mask=work.part(work.mask, part), scale=ctx.scale,
                )
                grad_q_blocks[:, :, span] = grad_q_part.view(batch, heads, *grad_q_part.shape[1:])
                flat = by_row[:, part].reshape(-1)
                flat_k.index_add_(0, flat, grad_k.reshape(-1, *k_blocks.shape[3:]))
                flat_v.index_add_(0, flat, grad_v.reshape(-1, *v_blocks.shape[3:]))
        return grad_q[:, :, :length], grad_k_blocks, grad_v_blocks, None, None, None, None
