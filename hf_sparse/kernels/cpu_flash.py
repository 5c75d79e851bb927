"""Memory-lean training for the block-sparse kernel on CPU.

Autograd through ``index_select`` + SDPA keeps the gathered key/value blocks alive until backward: each
query block holds its own copy of ``K`` key blocks, i.e. ``K`` times the keys and values per layer. The
function here saves only what dense SDPA saves: the queries, keys and values as the model passed them
(views, no copies), the output and the log-sum-exp. It re-gathers blocks in backward (a cheap copy) and
calls PyTorch's fused CPU flash-attention kernels directly. The output is written straight into a
``[B, L, H, D]`` tensor, the layout the model's output projection reads, so the model's
``transpose(1, 2).contiguous()`` is free and the projection saves the same tensor instead of a copy; the
gradients of the queries, keys and values are likewise made in the layout the model's projections passed.
Rows of a *band* (sliding windows: consecutive rows reading consecutive key blocks, one tile mask for all) read
their keys and values as overlapping strided views of the model's tensors instead of gathered copies, with
the one tile mask broadcast over the rows, so inference on them allocates only the output and that tile's
(additive) mask; they go to the fused kernel :data:`BAND_QUERIES` queries per row (several block rows merged
under one mask). Rows of a *shared window* (consecutive rows reading one span of key blocks: the sequence ends
of a sliding window, BigBird's global rows) read that span as one view and go as a single query row, each row
under its own mask.
Those operators are private (``aten::_scaled_dot_product_flash_attention_for_cpu`` and its backward), so
:func:`available` guards them: without them (or with dropout, a bias that needs a gradient, or off CPU)
the kernel takes the plain autograd path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .plan import TileMaskRecipe, additive

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
        mask: ``[1 or B*H, nr, bs, K*bs]`` mask, boolean (``True`` = allowed) or additive in the query dtype, or
            the :class:`~hf_sparse.kernels.plan.TileMaskRecipe` of a band's or shared window's boolean mask (built
            when the group runs, see :meth:`tile_mask`), or ``None``. Boolean masks become additive (what
            PyTorch's fused kernel takes) only for the call at hand (:func:`additive`), so no float copy of a
            plan's masks outlives it.
        empty: ``[1 or B*H, nr, bs, 1]`` bool, rows whose output is zero, or ``None``.
        band: the group's first key block if it is a band (:attr:`~hf_sparse.kernels.plan.PlanGroup.band`):
            its keys and values are read as overlapping strided views, without gathering.
        band_step: key blocks the band's window moves per row (:attr:`~hf_sparse.kernels.plan.PlanGroup.band_step`):
            ``1``, or ``0`` for a shared window (one key view for all rows, each row its own mask).
    """

    rows: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor | TileMaskRecipe | None
    empty: torch.Tensor | None
    band: int | None = None
    band_step: int = 1
    _built: dict = field(default_factory=dict, compare=False, repr=False)

    def width(self, n: int) -> int:
        """``K``, the key blocks each row reads (``n = B*H``)."""
        return self.index.numel() // (n * self.rows.numel())

    def tile_mask(self) -> torch.Tensor | None:
        """``mask`` as a tensor; a recipe is built on first use and kept until :meth:`release`."""
        if not isinstance(self.mask, TileMaskRecipe):
            return self.mask
        if "mask" not in self._built:
            self._built["mask"] = self.mask.build()[None]
        return self._built["mask"]

    def band_mask(self, piece: _BandPiece, heads: int, bs: int, like: torch.Tensor) -> torch.Tensor | None:
        """The additive mask of a band piece, ``[count, 1 or H, merge*bs, (K + (merge - 1)*step)*bs]``: for
        merged rows of a sliding band each original row's ``K``-block mask at its own offset and ``-inf``
        elsewhere (built once per batch row and pass, see :meth:`release`), for a shared window the rows' own masks
        stacked; additive in ``like``'s dtype, ``None`` when nothing is masked."""
        mask = self.tile_mask()
        one = _per_batch(mask, piece.b, heads, piece.pos)
        if piece.merge == 1 or (one is None and self.band_step == 0):
            return additive(one, like.dtype)
        if self.band_step == 0:  # [rows, 1 or H, bs, K*bs] -> [count, 1 or H, merge*bs, K*bs]
            stacked = one.transpose(0, 1).reshape(one.shape[1], piece.count, -1, one.shape[-1]).transpose(0, 1)
            return additive(stacked, like.dtype)
        key = (piece.b if mask is not None and mask.shape[0] > 1 else 0, piece.merge)
        if key not in self._built:
            width = self.width(like.shape[0] * heads)
            tile = (torch.zeros(1, bs, width * bs, dtype=like.dtype, device=like.device) if one is None
                    else additive(one[0], like.dtype))
            merged = tile.new_full((tile.shape[0], piece.merge * bs, (width + piece.merge - 1) * bs), float("-inf"))
            for j in range(piece.merge):
                merged[:, j * bs:(j + 1) * bs, j * bs:(j + width) * bs] = tile
            self._built[key] = merged
        return self._built[key].expand(piece.count, -1, -1, -1)

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


def _band_view(x: torch.Tensor, b: int, first: int, rows: int, blocks: int, bs: int, step: int = 1) -> torch.Tensor:
    """Rows ``i < rows`` of a band, each reading blocks ``first + i*step .. first + i*step + blocks - 1`` of batch
    ``b`` of ``x [B, H, L, D]`` (token stride ``x.stride(2)``): an overlapping ``[rows, H, blocks*bs, D]`` view, no
    copy."""
    s_batch, s_head, s_token, _ = x.stride()
    return x.as_strided((rows, x.shape[1], blocks * bs, x.shape[3]), (step * bs * s_token, s_head, s_token, 1),
                        x.storage_offset() + b * s_batch + first * bs * s_token)


#: Band rows go to the fused kernel ``BAND_QUERIES // bs`` at a time, merged into one query row of
#: ``BAND_QUERIES`` tokens that reads ``K + merge - 1`` key blocks (each original row keeps its own ``K`` under
#: the mask). Chosen by A/B timing on the 2-core x86_64 CPU: PyTorch's CPU flash kernel ran merged 256-query rows
#: faster than 128-query rows in training at 8,192 tokens, though they compute 11% more pairs; inference and 4,096
#: tokens were equal within noise, and 384 or 512 queries per call were slower. Model-level rows with it:
#: results/bench_model/bench_model.csv (before it: results/bench_model/quiet_before_merge/).
BAND_QUERIES = 256


@dataclass(frozen=True)
class _BandPiece:
    """``count`` merged rows of ``merge`` band rows each, of batch row ``b``: query blocks ``row0 ..
    row0 + count*merge - 1`` (the band's positions ``pos``); merged row ``i`` reads the :meth:`slots`
    key blocks from ``first + i*merge*step`` (``step`` = the band's :attr:`GroupWork.band_step`)."""

    b: int
    pos: slice
    row0: int
    first: int
    count: int
    merge: int
    step: int = 1

    def slots(self, width: int) -> int:
        """Key blocks one merged row reads: the band's ``K`` plus the window's moves over the merged rows."""
        return width + (self.merge - 1) * self.step

    def queries(self, x: torch.Tensor, bs: int) -> torch.Tensor:
        return _band_view(x, self.b, self.row0, self.count, self.merge, bs, self.merge)

    def keys(self, x: torch.Tensor, width: int, bs: int) -> torch.Tensor:
        return _band_view(x, self.b, self.first, self.count, self.slots(width), bs, self.merge * self.step)

    def tokens(self, bs: int) -> slice:
        return slice(self.row0 * bs, (self.row0 + self.count * self.merge) * bs)


def _band_pieces(work: GroupWork, batch: int, heads: int, bs: int, block_bytes: int, backward: bool):
    """The band's calls: sliding rows merged :data:`BAND_QUERIES` queries at a time when they share one mask
    (the leftover rows, and bands whose rows' masks differ, e.g. with padding, go one row per query row); a
    shared window's rows all merged into one query row (merging adds no pairs there) unless some rows must be
    zeroed; backward pieces keep the key/value gradients under :data:`CHUNK_BYTES`."""
    nr, width, move = work.rows.numel(), work.width(batch * heads), work.band_step
    if move == 0:
        merge = nr if work.empty is None else 1
    else:
        mask = work.tile_mask()
        one_mask = work.empty is None and (mask is None or mask.stride(1) == 0)
        merge = max(1, BAND_QUERIES // bs) if one_mask else 1
    row0 = int(work.rows[0])
    for b in range(batch):
        start = 0
        for f, stop in ((merge, nr - nr % merge), (1, nr)):
            per_call = 2 * (width + (f - 1) * move) * heads * block_bytes
            step = max(1, CHUNK_BYTES // per_call) * f if backward else stop - start
            for lo in range(start, stop, max(step, 1)):
                hi = min(lo + step, stop)
                yield _BandPiece(b, slice(lo, hi), row0 + lo, work.band + lo * move, (hi - lo) // f, f, move)
            start = stop


def _per_batch(x: torch.Tensor | None, b: int, heads: int, part: slice) -> torch.Tensor | None:
    """A ``[1 or B*H, nr, ...]`` mask/flag as the band kernel's ``[rows, 1 or H, ...]`` (a view)."""
    if x is None:
        return None
    x = x if x.shape[0] == 1 else x[b * heads:(b + 1) * heads]
    return x[:, part].transpose(0, 1)


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
        out = query.new_empty(batch, nq * bs, heads, v_blocks.shape[-1])  # the groups write every query block
        lse = None
        block_bytes = k_blocks[0, 0, 0].numel() * k_blocks.element_size()
        for work in works:
            run = _band_forward if work.band is not None else _gathered_forward
            lse = run(query, k_blocks, v_blocks, work, scale, bs, out, lse, nq, block_bytes)
            work.release()
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
            run = _band_backward if work.band is not None else _gathered_backward
            run(ctx, query, k_blocks, v_blocks, work, grad_out, out, lse, grad_q, grad_k_blocks, grad_v_blocks,
                block_bytes)
            work.release()
        return grad_q[:, :, :query.shape[2]], grad_k_blocks, grad_v_blocks, None, None, None, None


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


def _gathered_forward(query, k_blocks, v_blocks, work: GroupWork, scale, bs: int, out, lse, nq: int,
                      block_bytes: int):
    """Forward of a gathered group (as :func:`_band_forward`), in chunks of rows whose gathered copies stay under
    :data:`CHUNK_BYTES`."""
    batch, heads = query.shape[:2]
    n = batch * heads
    out_blocks = _blocks_view(out, heads, bs)
    for part, ids in work.chunks(n, block_bytes):
        k, v = _gather(k_blocks, work, part, n), _gather(v_blocks, work, part, n)
        o, l_part = _OPS(_rows(query, ids, bs), k, v, 0.0, False, attn_mask=work.attn_mask(part, query.dtype),
                         scale=scale)
        if work.empty is not None:
            o = o.masked_fill(work.part(work.empty, part), 0.0)
        span = _span(ids)
        out_blocks[:, :, span] = o.view(batch, heads, *o.shape[1:])
        if lse is None:
            lse = l_part.new_zeros(n, nq, bs)
        lse[:, span] = l_part
    return lse


def _gathered_backward(ctx, query, k_blocks, v_blocks, work: GroupWork, grad_out, out, lse, grad_q, grad_k_blocks,
                       grad_v_blocks, block_bytes: int) -> None:
    """Backward of a gathered group (as :func:`_band_backward`): the blocks are gathered again, their key/value
    gradients added back per batch row and head."""
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
        grad_q_part, grad_k, grad_v = _BACKWARD(
            g, _rows(query, ids, bs), k, v, out_blocks[:, :, span].reshape(n, ids.numel(), bs, -1),
            lse[:, span], 0.0, False, attn_mask=work.attn_mask(part, query.dtype), scale=ctx.scale,
        )
        grad_q_blocks[:, :, span] = grad_q_part.view(batch, heads, *grad_q_part.shape[1:])
        blocks = by_row[:, part].reshape(n, -1) % k_blocks.shape[2]
        _add_blocks(grad_k_blocks, blocks, grad_k)
        _add_blocks(grad_v_blocks, blocks, grad_v)


def _band_forward(query, k_blocks, v_blocks, work: GroupWork, scale, bs: int, out, lse, nq: int, block_bytes: int):
    """Forward of a band group into ``out [B, nq*bs, H, D]`` and ``lse [B*H, nq, bs]`` (created if ``None``)."""
    batch, heads = query.shape[:2]
    keys, values = _flat_blocks(k_blocks), _flat_blocks(v_blocks)
    width = work.width(batch * heads)
    for piece in _band_pieces(work, batch, heads, bs, block_bytes, backward=False):
        b, count, rows = piece.b, piece.count, piece.count * piece.merge
        o, l_part = _OPS(piece.queries(query, bs), piece.keys(keys, width, bs), piece.keys(values, width, bs), 0.0,
                         False, attn_mask=work.band_mask(piece, heads, bs, query), scale=scale)
        empty = _per_batch(work.empty, b, heads, piece.pos)  # only unmerged pieces have empty rows
        if empty is not None:
            o = o.masked_fill(empty, 0.0)
        out[b, piece.tokens(bs)].view(count, -1, heads, o.shape[-1]).copy_(o.transpose(1, 2))
        if lse is None:
            lse = l_part.new_zeros(batch * heads, nq, bs)
        lse[b * heads:(b + 1) * heads, piece.row0:piece.row0 + rows] = l_part.transpose(0, 1).reshape(heads, rows, bs)
    return lse


def _band_backward(ctx, query, k_blocks, v_blocks, work: GroupWork, grad_out, out, lse, grad_q, grad_k_blocks,
                   grad_v_blocks, block_bytes: int) -> None:
    """Backward of a band group: query gradients into ``grad_q [B, H, L', D]``; key/value gradients of slot
    ``s`` of merged rows ``i`` land on the blocks ``first + s + i*merge`` (one strided add per slot), a shared
    window's on ``first + s`` (summed over the rows)."""
    batch, heads = query.shape[:2]
    bs = ctx.bs
    keys, values = _flat_blocks(k_blocks), _flat_blocks(v_blocks)
    width = work.width(batch * heads)
    for piece in _band_pieces(work, batch, heads, bs, block_bytes, backward=True):
        b, count, rows, tokens = piece.b, piece.count, piece.count * piece.merge, piece.tokens(bs)
        g = grad_out[b, tokens].view(count, -1, heads, grad_out.shape[-1]).transpose(1, 2)
        empty = _per_batch(work.empty, b, heads, piece.pos)
        if empty is not None:
            g = g.masked_fill(empty, 0.0)
        grad_q_part, grad_k, grad_v = _BACKWARD(
            g, piece.queries(query, bs), piece.keys(keys, width, bs), piece.keys(values, width, bs),
            out[b, tokens].view(count, -1, heads, out.shape[-1]).transpose(1, 2),
            lse[b * heads:(b + 1) * heads, piece.row0:piece.row0 + rows].reshape(heads, count, -1).transpose(0, 1),
            0.0, False, attn_mask=work.band_mask(piece, heads, bs, query), scale=ctx.scale,
        )
        grad_q[b, :, tokens] = grad_q_part.transpose(0, 1).reshape(heads, rows * bs, -1)
        slots = piece.slots(width)
        for grads, target in ((grad_k, grad_k_blocks), (grad_v, grad_v_blocks)):
            per_slot = grads.unflatten(2, (slots, bs))                       # [count, H, slots, bs, D]
            if piece.step == 0:
                target[b, :, piece.first:piece.first + slots] += per_slot.sum(0)
                continue
            for slot in range(slots):
                start = piece.first + slot
                target[b, :, start:start + rows:piece.merge] += per_slot[:, :, slot].transpose(0, 1)


def _flat_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """``[B, H, nk, bs, D]`` block view -> the ``[B, H, nk*bs, D]`` view it came from (no copy)."""
    batch, heads, nk, bs, dim = blocks.shape
    return blocks.as_strided((batch, heads, nk * bs, dim), (blocks.stride(0), blocks.stride(1), blocks.stride(3),
                                                            blocks.stride(4)), blocks.storage_offset())
