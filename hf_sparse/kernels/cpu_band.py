"""Band rows of the fused CPU kernel: sliding windows and shared windows read their keys as views.

Rows of a *band* (sliding windows: consecutive rows reading consecutive key blocks, one tile mask for all) read
their keys and values as overlapping strided views of the model's tensors instead of gathered copies. With a
log-sum-exp to keep (training) they go to the fused kernel :data:`BAND_QUERIES` queries per row (several block
rows merged under the one tile mask, broadcast); without (inference, fp32/fp64) one block row at a time through
batched matmuls and a softmax (:func:`_band_matmul`), whose scores live only for that row. Rows of a *shared
window* (consecutive rows reading one span of key blocks: the sequence ends of a sliding window, BigBird's global
rows) read that span as one view and go as a single query row, each row under its own mask. Called by
:func:`~hf_sparse.kernels.cpu_flash.fused_forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cpu_work import CHUNK_BYTES, FLASH, FLASH_BACKWARD, GroupWork
from .plan import additive


def _band_view(x: torch.Tensor, b: int, first: int, rows: int, blocks: int, bs: int, step: int = 1) -> torch.Tensor:
    """Rows ``i < rows`` of a band, each reading blocks ``first + i*step .. first + i*step + blocks - 1`` of batch
    ``b`` of ``x [B, H, L, D]`` (token stride ``x.stride(2)``): an overlapping ``[rows, H, blocks*bs, D]`` view, no
    copy."""
    s_batch, s_head, s_token, _ = x.stride()
    return x.as_strided((rows, x.shape[1], blocks * bs, x.shape[3]), (step * bs * s_token, s_head, s_token, 1),
                        x.storage_offset() + b * s_batch + first * bs * s_token)


#: Band rows go to the fused kernel ``BAND_QUERIES // bs`` at a time, merged into one query row of
#: ``BAND_QUERIES`` tokens that reads ``K + merge - 1`` key blocks (each original row keeps its own ``K`` under
#: the mask). Merging trades a few extra computed pairs for fewer, larger calls of the fused kernel; the timing
#: behind 256 is in docs/benchmarks.md.
BAND_QUERIES = 256


@dataclass(frozen=True)
class _BandPiece:
    """``count`` merged rows of ``merge`` band rows each, of batch row ``b``: query blocks ``row0 ..
    row0 + count*merge - 1`` (the band's positions ``pos``); merged row ``i`` reads the :meth:`slots`
    key blocks from ``first + i*merge*step`` (``step`` = the band's :attr:`GroupWork.band_step`). ``run`` is the
    first position of the run of rows sharing the piece's mask (see :func:`_mask_runs`)."""

    b: int
    pos: slice
    row0: int
    first: int
    count: int
    merge: int
    step: int = 1
    run: int = 0

    def slots(self, width: int) -> int:
        """Key blocks one merged row reads: the band's ``K`` plus the window's moves over the merged rows."""
        return width + (self.merge - 1) * self.step

    def queries(self, x: torch.Tensor, bs: int) -> torch.Tensor:
        return _band_view(x, self.b, self.row0, self.count, self.merge, bs, self.merge)

    def keys(self, x: torch.Tensor, width: int, bs: int) -> torch.Tensor:
        return _band_view(x, self.b, self.first, self.count, self.slots(width), bs, self.merge * self.step)

    def tokens(self, bs: int) -> slice:
        return slice(self.row0 * bs, (self.row0 + self.count * self.merge) * bs)


def _mask_runs(work: GroupWork, b: int, batch: int) -> list[tuple[int, int]]:
    """``(start, stop)`` positions of the sliding band's runs of consecutive rows with one mask in batch row
    ``b``: the whole band when its rows share one tile mask; with a model mask (e.g. padding) the rows whose
    tiles it leaves alone form one run and the rows it touches split off."""
    nr, mask = work.rows.numel(), work.tile_mask()
    if mask is None or mask.stride(1) == 0 or nr == 1:
        return [(0, nr)]
    rows = _per_batch(mask, b, batch, slice(None))                        # [nr, 1 or H, bs or 1, K*bs]
    breaks = torch.nonzero(~(rows[1:] == rows[:-1]).flatten(1).all(1)).view(-1).add(1).tolist()
    return list(zip([0, *breaks], [*breaks, nr], strict=True))


def _band_pieces(work: GroupWork, batch: int, heads: int, bs: int, block_bytes: int, backward: bool):
    """The band's calls: each run of sliding rows with one mask (:func:`_mask_runs`) merged
    :data:`BAND_QUERIES` queries at a time (its leftover rows one row per query row); a shared window's rows
    all merged into one query row (merging adds no pairs there); backward pieces keep the key/value gradients
    under :data:`CHUNK_BYTES`."""
    nr, width, move = work.rows.numel(), work.slots, work.band_step
    row0 = int(work.rows[0])
    for b in range(batch):
        runs = [(0, nr)] if move == 0 else _mask_runs(work, b, batch)
        merge = nr if move == 0 else max(1, BAND_QUERIES // bs)
        for run, end in runs:
            start = run
            for f, stop in ((merge, end - (end - run) % merge), (1, end)):
                per_call = 2 * (width + (f - 1) * move) * heads * block_bytes
                step = max(1, CHUNK_BYTES // per_call) * f if backward else stop - start
                for lo in range(start, stop, max(step, 1)):
                    hi = min(lo + step, stop)
                    yield _BandPiece(b, slice(lo, hi), row0 + lo, work.band + lo * move, (hi - lo) // f, f, move, run)
                start = stop


def _per_batch(x: torch.Tensor | None, b: int, batch: int, part: slice) -> torch.Tensor | None:
    """A ``[N, nr, ...]`` mask/flag with ``N`` = 1 (one for all batch rows), ``B`` (one per batch row, shared by
    the heads) or ``B*H`` (one per batch row and head) as the band kernel's ``[rows, 1 or H, ...]`` for batch row
    ``b`` (a view)."""
    if x is None:
        return None
    if x.shape[0] > 1:
        per = x.shape[0] // batch
        x = x[b * per:(b + 1) * per]
    return x[:, part].transpose(0, 1)


def _merged(x: torch.Tensor | None, count: int, bs: int) -> torch.Tensor | None:
    """Per-row ``[rows, 1 or H, bs or 1, ...]`` as ``count`` merged rows ``[count, 1 or H, rows/count*bs, ...]``."""
    if x is None:
        return None
    x = x.expand(-1, -1, bs, -1)
    return x.transpose(0, 1).reshape(x.shape[1], count, -1, x.shape[-1]).transpose(0, 1)


def _band_mask(work: GroupWork, piece: _BandPiece, batch: int, bs: int, like: torch.Tensor) -> torch.Tensor | None:
    """The additive mask of a band piece, ``[count, 1 or H, merge*bs, (K + (merge - 1)*step)*bs]``: for
    merged rows of a sliding band each original row's ``K``-block mask (one per run, :func:`_mask_runs`) at its
    own offset and ``-inf`` elsewhere (built once per batch row, run and pass, see :meth:`GroupWork.release`),
    for a shared window the rows' own masks stacked; additive in ``like``'s dtype, ``None`` when nothing is
    masked."""
    mask = work.tile_mask()
    one = _per_batch(mask, piece.b, batch, piece.pos)
    if piece.merge == 1 or (one is None and work.band_step == 0):
        return additive(one, like.dtype)
    if work.band_step == 0:  # [rows, 1 or H, bs, K*bs] -> [count, 1 or H, merge*bs, K*bs]
        return additive(_merged(one, piece.count, bs), like.dtype)
    key = (piece.b if mask is not None and mask.shape[0] > 1 else 0, piece.run, piece.merge)

    def build() -> torch.Tensor:
        width = work.slots
        tile = (torch.zeros(1, bs, width * bs, dtype=like.dtype, device=like.device) if one is None
                else additive(one[0], like.dtype))
        merged = tile.new_full((tile.shape[0], piece.merge * bs, (width + piece.merge - 1) * bs), float("-inf"))
        for j in range(piece.merge):
            merged[:, j * bs:(j + 1) * bs, j * bs:(j + width) * bs] = tile
        return merged

    return work.cached(key, build).expand(piece.count, -1, -1, -1)


def _piece_empty(work: GroupWork, piece: _BandPiece, batch: int, bs: int) -> torch.Tensor | None:
    """The piece's rows to zero as ``[count, 1 or H, merge*bs, 1]`` bool, or ``None``."""
    return _merged(_per_batch(work.empty, piece.b, batch, piece.pos), piece.count, bs)


def band_forward(query, k_blocks, v_blocks, work: GroupWork, scale, bs: int, out, lse, block_bytes: int) -> None:
    """Forward of a band group into ``out [B, nq*bs, H, D]`` and, unless it is ``None`` (inference),
    ``lse [B*H, nq, bs]``."""
    batch, heads = query.shape[:2]
    keys, values = _flat_blocks(k_blocks), _flat_blocks(v_blocks)
    if lse is None and work.band_step == 1 and query.dtype in MATMUL_DTYPES:
        _band_matmul(query, keys, values, work, scale, bs, out)
        return
    width = work.slots
    for piece in _band_pieces(work, batch, heads, bs, block_bytes, backward=False):
        b, count, rows = piece.b, piece.count, piece.count * piece.merge
        o, l_part = FLASH(piece.queries(query, bs), piece.keys(keys, width, bs), piece.keys(values, width, bs), 0.0,
                         False, attn_mask=_band_mask(work, piece, batch, bs, query), scale=scale)
        empty = _piece_empty(work, piece, batch, bs)
        if empty is not None:
            o = o.masked_fill(empty, 0.0)
        out[b, piece.tokens(bs)].view(count, -1, heads, o.shape[-1]).copy_(o.transpose(1, 2))
        if lse is not None:
            lse[b * heads:(b + 1) * heads, piece.row0:piece.row0 + rows] = \
                l_part.transpose(0, 1).reshape(heads, rows, bs)


#: Query dtypes whose sliding band rows go through :func:`_band_matmul` when no log-sum-exp is kept (inference).
#: Half types stay on the fused kernel, which accumulates in float32.
MATMUL_DTYPES = (torch.float32, torch.float64)


def _band_matmul(query, keys, values, work: GroupWork, scale, bs: int, out) -> None:
    """A sliding band's forward without the log-sum-exp, one block row at a time over all heads: scores
    ``[H, bs, K*bs]`` by a batched matmul (plus the row's additive mask), an exact softmax, a batched matmul with
    the values, written into ``out [B, nq*bs, H, D]``; queries, keys and values are views. On small tiles this
    runs at matmul speed where PyTorch's fused CPU kernel does not (timings: docs/benchmarks.md).
    Each row's scores live only for that row (``H * bs * K*bs`` elements, twice)."""
    batch, heads = query.shape[:2]
    span = work.slots * bs
    row0, first = int(work.rows[0]), work.band
    for b in range(batch):
        for i in range(work.rows.numel()):
            q_at, k_at = (row0 + i) * bs, (first + i) * bs
            q = query[b, :, q_at:q_at + bs]
            k, v = keys[b, :, k_at:k_at + span], values[b, :, k_at:k_at + span]
            mask = _row_mask(work, b, i, batch, query.dtype)
            scores = (torch.bmm(q, k.transpose(1, 2)).mul_(scale) if mask is None
                      else torch.baddbmm(mask, q, k.transpose(1, 2), alpha=scale))
            o = torch.bmm(scores.softmax(-1), v)
            empty = _per_batch(work.empty, b, batch, slice(i, i + 1))
            if empty is not None:
                o = o.masked_fill(empty[0], 0.0)
            out[b, q_at:q_at + bs].copy_(o.transpose(0, 1))


def _row_mask(work: GroupWork, b: int, i: int, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive mask ``[1 or H, bs, K*bs]`` of the band's row ``i`` in batch row ``b`` (or ``None``); the one tile
    mask of a band without model masks is converted once per pass."""
    mask = work.tile_mask()
    if mask is not None and mask.shape[0] == 1 and mask.stride(1) == 0:
        return work.cached("row", lambda: additive(mask[:, 0], dtype))
    row = _per_batch(mask, b, batch, slice(i, i + 1))
    return None if row is None else additive(row[0], dtype)


def band_backward(ctx, query, k_blocks, v_blocks, work: GroupWork, grad_out, out, lse, grad_q, grad_k_blocks,
                   grad_v_blocks, block_bytes: int) -> None:
    """Backward of a band group: query gradients into ``grad_q [B, H, L', D]``; key/value gradients of slot
    ``s`` of merged rows ``i`` land on the blocks ``first + s + i*merge`` (one strided add per slot), a shared
    window's on ``first + s`` (summed over the rows)."""
    batch, heads = query.shape[:2]
    bs = ctx.bs
    keys, values = _flat_blocks(k_blocks), _flat_blocks(v_blocks)
    width = work.slots
    for piece in _band_pieces(work, batch, heads, bs, block_bytes, backward=True):
        b, count, rows, tokens = piece.b, piece.count, piece.count * piece.merge, piece.tokens(bs)
        g = grad_out[b, tokens].view(count, -1, heads, grad_out.shape[-1]).transpose(1, 2)
        empty = _piece_empty(work, piece, batch, bs)
        if empty is not None:
            g = g.masked_fill(empty, 0.0)
        grad_q_part, grad_k, grad_v = FLASH_BACKWARD(
            g, piece.queries(query, bs), piece.keys(keys, width, bs), piece.keys(values, width, bs),
            out[b, tokens].view(count, -1, heads, out.shape[-1]).transpose(1, 2),
            lse[b * heads:(b + 1) * heads, piece.row0:piece.row0 + rows].reshape(heads, count, -1).transpose(0, 1),
            0.0, False, attn_mask=_band_mask(work, piece, batch, bs, query), scale=ctx.scale,
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
