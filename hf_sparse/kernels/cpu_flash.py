"""The block-sparse kernel on CPU through PyTorch's fused flash operators: :func:`fused_forward` (inference)
and memory-lean training (:class:`GatheredFlashAttention`).

Autograd through ``index_select`` + SDPA keeps the gathered key/value blocks alive until backward: each
query block holds its own copy of ``K`` key blocks, i.e. ``K`` times the keys and values per layer. The
function here saves only what dense SDPA saves: the queries, keys and values as the model passed them
(views, no copies), the output and the log-sum-exp. It re-gathers blocks in backward (a cheap copy) and
calls PyTorch's fused CPU flash-attention kernels directly (:mod:`~hf_sparse.kernels.cpu_work`). The output is
written straight into a ``[B, L, H, D]`` tensor, the layout the model's output projection reads, so the model's
``transpose(1, 2).contiguous()`` is free and the projection saves the same tensor instead of a copy; the
gradients of the queries, keys and values are likewise made in the layout the model's projections passed.
Bands and shared windows read their keys as views instead of gathering (:mod:`~hf_sparse.kernels.cpu_band`).
"""

from __future__ import annotations

import torch

from .cpu_band import band_backward, band_forward
from .cpu_work import FLASH, FLASH_BACKWARD, GroupWork


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
    block once), ``scale``, ``block_size``, ``nq`` (query blocks). Returns ``[B, nq*bs, H, D]`` contiguous (rows
    past ``Lq`` are padding); the log-sum-exp is kept as ``[B*H, nq, bs]``. Work is done in chunks of query-block
    rows; each group's masks are built when it runs and released after it (forward and backward alike).
    """

    @staticmethod
    def forward(ctx, query, k_blocks, v_blocks, works, scale, bs, nq):
        out, lse = fused_forward(query, k_blocks, v_blocks, works, scale, bs, nq, keep_lse=True)
        ctx.save_for_backward(query, k_blocks, v_blocks, out, lse)
        ctx.works, ctx.scale, ctx.bs = works, scale, bs
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, k_blocks, v_blocks, out, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        # gradients in the inputs' memory layout (the model's [B, L, H, D]): its transposes back are free views
        grad_q = _empty_in_layout(query, out.shape[1])  # every query block written below
        grad_k_blocks, grad_v_blocks = torch.zeros_like(k_blocks), torch.zeros_like(v_blocks)
        block_bytes = k_blocks[0, 0, 0].numel() * k_blocks.element_size()
        for work in ctx.works:
            run = band_backward if work.band is not None else _gathered_backward
            run(ctx, query, k_blocks, v_blocks, work, grad_out, out, lse, grad_q, grad_k_blocks, grad_v_blocks,
                block_bytes)
            work.release()
        return grad_q[:, :, :query.shape[2]], grad_k_blocks, grad_v_blocks, None, None, None, None


def fused_forward(query, k_blocks, v_blocks, works: list[GroupWork], scale: float, bs: int, nq: int,
                  keep_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The forward of :class:`GatheredFlashAttention` (same inputs), returning ``(out, lse or None)``.
    ``keep_lse=False`` (inference: nothing to differentiate) lets band rows skip the log-sum-exp
    (:func:`~hf_sparse.kernels.cpu_band.band_forward`)."""
    batch, heads = query.shape[:2]
    out = query.new_empty(batch, nq * bs, heads, v_blocks.shape[-1])  # the groups write every query block
    lse = None
    if keep_lse:  # the fused kernel's log-sum-exp dtype: float64 for float64 inputs, else float32
        lse_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        lse = query.new_empty(batch * heads, nq, bs, dtype=lse_dtype)  # the groups write every query block
    block_bytes = k_blocks[0, 0, 0].numel() * k_blocks.element_size()
    for work in works:
        run = band_forward if work.band is not None else _gathered_forward
        run(query, k_blocks, v_blocks, work, scale, bs, out, lse, block_bytes)
        work.release()
    return out, lse


def _empty_in_layout(x: torch.Tensor, length: int) -> torch.Tensor:
    """An uninitialized ``[B, H, length, D]`` stored like ``x``: as ``[B, length, H, D]`` when ``x`` is a transposed view
    of the model's ``[B, L, H, D]`` projection, else contiguous."""
    batch, heads, _, dim = x.shape
    if x.stride(1) < x.stride(2):
        return x.new_empty(batch, length, heads, dim).transpose(1, 2)
    return x.new_empty(batch, heads, length, dim)


def _add_blocks(target: torch.Tensor, blocks: torch.Tensor, grads: torch.Tensor) -> None:
    """``target [B, H, nk, bs, D]`` (any strides) ``+=`` gathered-block gradients ``grads [B*H, rows, K*bs, D]``
    at key blocks ``blocks [B*H, rows*K]`` (one ``index_add_`` per batch row and head)."""
    heads, bs, dim = target.shape[1], target.shape[3], target.shape[4]
    per_head = grads.reshape(blocks.shape[0], -1, bs, dim)
    for i in range(blocks.shape[0]):
        target[i // heads, i % heads].index_add_(0, blocks[i], per_head[i])


def _gathered_forward(query, k_blocks, v_blocks, work: GroupWork, scale, bs: int, out, lse,
                      block_bytes: int) -> None:
    """Forward of a gathered group (as :func:`~hf_sparse.kernels.cpu_band.band_forward`), in chunks of rows whose
    gathered copies stay under :data:`~hf_sparse.kernels.cpu_work.CHUNK_BYTES`."""
    batch, heads = query.shape[:2]
    n = batch * heads
    out_blocks = _blocks_view(out, heads, bs)
    for part, ids in work.chunks(n, block_bytes):
        k, v = _gather(k_blocks, work, part, n), _gather(v_blocks, work, part, n)
        o, l_part = FLASH(_rows(query, ids, bs), k, v, 0.0, False, attn_mask=work.attn_mask(part, query.dtype),
                         scale=scale)
        if work.empty is not None:
            o = o.masked_fill(work.part(work.empty, part), 0.0)
        span = _span(ids)
        out_blocks[:, :, span] = o.view(batch, heads, *o.shape[1:])
        if lse is not None:
            lse[:, span] = l_part


def _gathered_backward(ctx, query, k_blocks, v_blocks, work: GroupWork, grad_out, out, lse, grad_q, grad_k_blocks,
                       grad_v_blocks, block_bytes: int) -> None:
    """Backward of a gathered group (as :func:`~hf_sparse.kernels.cpu_band.band_backward`): the blocks are
    gathered again, their key/value gradients added back per batch row and head."""
    batch, heads = query.shape[:2]
    n, bs = batch * heads, ctx.bs
    grad_blocks, out_blocks = _blocks_view(grad_out, heads, bs), _blocks_view(out, heads, bs)
    grad_q_blocks = grad_q.unflatten(2, (-1, bs))
    by_row = work.index.view(n, work.rows.numel(), -1)
    for part, ids in work.chunks(n, block_bytes):
        k, v = _gather(k_blocks, work, part, n), _gather(v_blocks, work, part, n)
        span = _span(ids)
        g = grad_blocks[:, :, span].reshape(n, ids.numel(), bs, -1)
        if work.empty is not None:
            g = g.masked_fill(work.part(work.empty, part), 0.0)
        grad_q_part, grad_k, grad_v = FLASH_BACKWARD(
            g, _rows(query, ids, bs), k, v, out_blocks[:, :, span].reshape(n, ids.numel(), bs, -1),
            lse[:, span], 0.0, False, attn_mask=work.attn_mask(part, query.dtype), scale=ctx.scale,
        )
        grad_q_blocks[:, :, span] = grad_q_part.view(batch, heads, *grad_q_part.shape[1:])
        blocks = by_row[:, part].reshape(n, -1) % k_blocks.shape[2]
        _add_blocks(grad_k_blocks, blocks, grad_k)
        _add_blocks(grad_v_blocks, blocks, grad_v)


