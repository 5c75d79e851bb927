"""Block-sparse plans: which key blocks each query block gathers, and the token mask inside those tiles.

A plan turns a pattern's :class:`~hf_sparse.patterns.BlockLayout` into the fixed-width index table the
block-sparse kernel gathers with. Every query-block row gathers the same number of slots ``K`` (the most
active tiles of any row); rows with fewer active tiles point their spare slots at an all-zero sentinel
block (index ``n_kv_blocks``) that the tile mask hides. Plans of fixed patterns are cached per
(pattern, context, block size, device); data-dependent patterns get a fresh plan per call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import torch

from ..patterns import BlockLayout, MaskContext, MaskMod, Pattern, block_layout, bound_mask_mod
from ..patterns.materialize import CHUNK_ELEMENTS


def additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean mask (``True`` = allowed) as ``0`` / ``-inf`` in ``dtype``, the form PyTorch's fused CPU kernel
    takes; dimensions the mask is expanded along (stride 0) stay expanded. Float masks and ``None`` pass unchanged."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    strides = zip(mask.stride(), mask.shape, strict=True)
    unique = mask[tuple(slice(0, 1) if stride == 0 and size > 1 else slice(None) for stride, size in strides)]
    out = torch.zeros(unique.shape, dtype=dtype, device=mask.device).masked_fill_(~unique, float("-inf"))
    return out.expand(mask.shape)


@dataclass(frozen=True)
class TileMaskRecipe:
    """What builds a band's or a shared window's tile mask from the pattern's mask function, kept by the plan
    instead of the mask itself: a cached plan then holds only index tables for those groups, and each call builds
    the mask it needs and frees it afterwards (the cost per call is in docs/benchmarks.md).

    Attributes:
        mod / ctx / block_size / n_kv: as for the plan that owns it.
        rows / indices: ``[r]`` query-block ids and their ``[r, K]`` key blocks (see :class:`PlanGroup`).
        repeat: rows the built mask is expanded over (stride 0): a band's one-row mask covers all its rows;
            ``1`` when every row of ``rows`` gets its own.
    """

    mod: MaskMod
    ctx: MaskContext
    block_size: int
    n_kv: int
    rows: torch.Tensor
    indices: torch.Tensor
    repeat: int = 1

    def build(self) -> torch.Tensor:
        """``[r * repeat, bs, K*bs]`` bool, ``True`` where the pattern allows the pair."""
        mask = _tile_mask(self.mod, self.ctx, self.indices, self.rows, self.block_size, self.n_kv)
        return mask if self.repeat == 1 else mask.expand(self.repeat, -1, -1)


@dataclass(frozen=True)
class PlanGroup:
    """Query-block rows that gather the same number of key blocks.

    Attributes:
        rows: ``[nr]`` int64 query-block ids, ascending.
        indices: ``[*P, nr, K]`` int64 key-block ids per row, ascending; ``n_kv_blocks`` marks an empty slot.
            ``P`` is ``()`` for fixed patterns and ``(B, Hq)`` for dynamic ones.
        mask: the tile mask (see :attr:`tile_mask`) as a tensor, as the :class:`TileMaskRecipe` that builds it
            (bands and shared windows), or ``None`` when every gathered pair is allowed.
        empty_rows: ``[*P, nr, bs, 1]`` bool marking in-range rows the pattern leaves empty (their output
            must be zeroed), or ``None`` if there are none.
        band: for a *band* (consecutive rows ``r`` that each read the consecutive key blocks
            ``band + i .. band + i + K - 1``, ``i = r - rows[0]``, all inside the sequences, with one tile mask
            for every row): the first row's first key block, else ``None``. A band's keys are overlapping
            windows of the key tensor, so kernels can read them as strided views instead of gathering, and its
            :attr:`tile_mask` is one row's mask expanded (stride 0) over the rows.
        band_step: how many key blocks a band's window moves per row: ``1`` as above, or ``0`` for consecutive
            rows that all read the same blocks ``band .. band + K - 1`` (a *shared window*: the rows at either
            end of a sliding window), each row with its own tile mask.
    """

    rows: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor | TileMaskRecipe | None
    empty_rows: torch.Tensor | None
    band: int | None = None
    band_step: int = 1
    _additive: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def tile_mask(self) -> torch.Tensor | None:
        """``[*P, nr, bs, K * bs]`` bool, ``True`` where the pattern allows the pair (pattern and sequence ends
        only, not the model's padding), or ``None`` when every gathered pair is allowed. Rows that would allow
        nothing (query rows past the end, rows the pattern leaves empty) allow their whole tile instead, so fused
        kernels never see an empty row. Built on each access for bands and shared windows (:class:`TileMaskRecipe`)."""
        return self.mask.build() if isinstance(self.mask, TileMaskRecipe) else self.mask

    def additive_tile_mask(self, dtype: torch.dtype) -> torch.Tensor | None:
        """``tile_mask`` as ``0`` / ``-inf`` in ``dtype`` (what fused CPU kernels take), built once per dtype so
        that every layer using this (cached) plan shares one tensor instead of converting or saving its own. Kept
        for gathered groups, whose per-row masks cost time to convert per call; bands and shared windows build
        theirs per call from their :class:`TileMaskRecipe` instead (one tile, or a few rows)."""
        if self.mask is None:
            return None
        if isinstance(self.mask, TileMaskRecipe):
            raise ValueError("additive_tile_mask is cached for gathered groups only; bands and shared windows build "
                             "theirs per call (use tile_mask)")
        if dtype not in self._additive:
            self._additive[dtype] = additive(self.mask, dtype)
        return self._additive[dtype]

    @property
    def slots(self) -> int:
        return self.indices.shape[-1]

    def gather_indices(self, n_kv_blocks: int) -> torch.Tensor:
        """``indices`` with empty slots pointing at block 0 (hidden by the mask), for gathering."""
        return self.indices.masked_fill(self.indices == n_kv_blocks, 0)


@dataclass(frozen=True)
class BlockSparsePlan:
    """Gather tables and tile masks of one pattern at one shape, in groups of rows of equal width.

    Grouping keeps a few wide rows (BigBird's global blocks attend everything) from widening all others.

    Attributes:
        block_size: tile edge ``bs``.
        n_q_blocks / n_kv_blocks: ``ceil(Lq / bs)`` / ``ceil(Lk / bs)``.
        groups: the row groups; together they cover every query block once.
        order: ``[n_q_blocks]`` positions that restore query-block order after concatenating the groups'
            outputs, or ``None`` when the groups are already in order.
    """

    block_size: int
    n_q_blocks: int
    n_kv_blocks: int
    groups: tuple[PlanGroup, ...]
    order: torch.Tensor | None

    @property
    def per_head(self) -> bool:
        return self.groups[0].indices.dim() == 4

    @property
    def computed_fraction(self) -> float:
        """Gathered tiles / all tiles: the work a kernel does relative to dense attention."""
        gathered = sum(g.rows.numel() * g.slots for g in self.groups)
        return gathered / max(self.n_q_blocks * self.n_kv_blocks, 1)


def _indices(active: torch.Tensor, n_kv: int) -> torch.Tensor:
    """Active key blocks of each row first (ascending), padded with the sentinel ``n_kv``."""
    counts = active.sum(-1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    order = torch.argsort((~active).to(torch.int8), dim=-1, stable=True)[..., :width]
    slot = torch.arange(width, device=active.device)
    return torch.where(slot < counts[..., None], order, torch.full_like(order, n_kv))


def _tile_mask(mod: MaskMod, ctx: MaskContext, indices: torch.Tensor, rows: torch.Tensor, bs: int,
               n_kv: int) -> torch.Tensor:
    """``[*P, nr, bs, K*bs]`` bool: pattern mask on the gathered tiles, False outside the sequences; evaluated
    in chunks of rows (:data:`~hf_sparse.patterns.materialize.CHUNK_ELEMENTS` pairs each)."""
    pairs_per_row = indices[..., :1, :].numel() * bs * bs
    step = max(1, CHUNK_ELEMENTS // max(pairs_per_row, 1))
    if rows.numel() <= step:
        return _tile_mask_rows(mod, ctx, indices, rows, bs, n_kv)
    return torch.cat([_tile_mask_rows(mod, ctx, indices[..., start:start + step, :], rows[start:start + step], bs,
                                      n_kv) for start in range(0, rows.numel(), step)], dim=-3)


def _tile_mask_rows(mod: MaskMod, ctx: MaskContext, indices: torch.Tensor, rows: torch.Tensor, bs: int,
                    n_kv: int) -> torch.Tensor:
    dev = indices.device
    width = indices.shape[-1]
    q_rows = (rows.view(-1, 1) * bs + torch.arange(bs, device=dev)).view(-1, 1, bs, 1)  # query row in the call
    cols = indices[..., None, None] * bs + torch.arange(bs, device=dev)                  # [*P, nr, K, 1, bs]
    valid = (q_rows < ctx.q_len) & (cols < ctx.kv_len) & (indices[..., None, None] < n_kv)
    q_pos = (q_rows + ctx.q_offset).clamp(max=max(ctx.q_offset + ctx.q_len - 1, 0))
    kv_pos = cols.clamp(max=max(ctx.kv_len - 1, 0))
    if indices.dim() == 4:
        b = torch.arange(indices.shape[0], device=dev).view(-1, 1, 1, 1, 1, 1)
        h = torch.arange(indices.shape[1], device=dev).view(1, -1, 1, 1, 1, 1)
    else:
        b = h = torch.zeros((), dtype=torch.long, device=dev)
    allowed = mod(b, h, q_pos, kv_pos) & valid                                           # [*P, nr, K, bs, bs]
    allowed = allowed.expand(*indices.shape, bs, bs)
    return allowed.transpose(-2, -3).reshape(*indices.shape[:-1], bs, width * bs)


def _group(active: torch.Tensor, rows: torch.Tensor, mod: MaskMod, ctx: MaskContext, bs: int) -> PlanGroup:
    return _group_at(_indices(active[..., rows, :], active.shape[-1]), rows, mod, ctx, bs, active.shape[-1])


def _group_at(indices: torch.Tensor, rows: torch.Tensor, mod: MaskMod, ctx: MaskContext, bs: int,
              n_kv: int) -> PlanGroup:
    """The group of ``rows`` reading key blocks ``indices`` (``n_kv`` = empty slot), with its tile mask."""
    tile_mask = _tile_mask(mod, ctx, indices, rows, bs, n_kv)
    row_any = tile_mask.any(dim=-1, keepdim=True)
    in_range = ((rows.view(-1, 1) * bs + torch.arange(bs, device=rows.device)) < ctx.q_len).view(-1, bs, 1)
    empty = ~row_any & in_range
    tile_mask = tile_mask | ~row_any
    return PlanGroup(rows, indices, None if bool(tile_mask.all()) else tile_mask, empty if bool(empty.any()) else None)


def _band_runs(group: PlanGroup, ctx: MaskContext, bs: int) -> list[tuple[int, int]]:
    """``(start, stop)`` positions of the group's maximal bands (see :attr:`PlanGroup.band`), at least
    :data:`MIN_BAND_ROWS` rows each."""
    idx, rows = group.indices, group.rows  # a fixed plan's group without empty rows (see _split_bands)
    if rows.numel() < MIN_BAND_ROWS:
        return []
    width = idx.shape[1]
    ok = ((idx - idx[:, :1]) == torch.arange(width, device=idx.device)).all(1)  # consecutive key blocks
    ok &= ((rows + 1) * bs <= ctx.q_len) & ((idx[:, -1] + 1) * bs <= ctx.kv_len)  # whole tiles inside
    follows = (rows[1:] == rows[:-1] + 1) & (idx[1:, 0] == idx[:-1, 0] + 1) & ok[1:] & ok[:-1]
    if group.mask is not None:
        follows &= (group.mask[1:] == group.mask[:-1]).flatten(1).all(1)
    runs, start = [], None
    for i, linked in enumerate([*follows.tolist(), False]):
        if linked and start is None:
            start = i
        elif not linked and start is not None:
            if i + 1 - start >= MIN_BAND_ROWS:
                runs.append((start, i + 1))
            start = None
    return runs


def _shared_window(group: PlanGroup, part: torch.Tensor, mod: MaskMod, ctx: MaskContext, bs: int,
                   n_kv: int) -> PlanGroup | None:
    """Rows ``group.rows[part]`` (consecutive) as one shared window (:attr:`PlanGroup.band_step` ``0``): every row
    reads the span from the first to the last key block any of them reads, when that span is no wider than the
    group's ``K`` (so no row computes more than gathered). The rows' query tiles must lie inside the sequence;
    keys may reach into a partial last block (kernels read the padded keys, the tile mask hides the padding)."""
    rows, indices = group.rows[part], group.indices[part]
    used = indices[indices < n_kv]
    if used.numel() == 0:
        return None
    first, last = int(used.min()), int(used.max())
    width = last - first + 1
    if width > group.slots:
        return None
    span = torch.arange(first, first + width, device=rows.device).expand(rows.numel(), -1)
    shared = _group_at(span, rows, mod, ctx, bs, n_kv)
    if shared.empty_rows is not None:
        return None
    # every row in range and none empty, so the recipe builds exactly the mask _group_at made
    mask = None if shared.mask is None else TileMaskRecipe(mod, ctx, bs, n_kv, rows, span)
    return replace(shared, mask=mask, band=first, band_step=0)


def _consecutive_runs(rows: torch.Tensor) -> list[torch.Tensor]:
    """Positions of ``rows`` (ascending) split where a row does not follow the previous one."""
    breaks = (torch.nonzero(rows[1:] != rows[:-1] + 1).view(-1) + 1).tolist()
    return [torch.arange(a, b, device=rows.device) for a, b in zip([0, *breaks], [*breaks, rows.numel()], strict=True)]


def _split_bands(group: PlanGroup, mod: MaskMod, ctx: MaskContext, bs: int, n_kv: int) -> list[PlanGroup]:
    """``group`` as its bands, its shared windows (runs of two or more leftover rows, see :func:`_shared_window`)
    and one group of the remaining rows (or unchanged when it has neither)."""
    if group.indices.dim() != 2 or group.empty_rows is not None:
        return [group]
    runs = _band_runs(group, ctx, bs)
    parts, rest = [], torch.ones(group.rows.numel(), dtype=torch.bool, device=group.rows.device)
    for start, stop in runs:
        rest[start:stop] = False
        first = slice(start, start + 1)
        mask = (None if group.mask is None or bool(group.mask[first].all())
                else TileMaskRecipe(mod, ctx, bs, n_kv, group.rows[first], group.indices[first], stop - start))
        parts.append(PlanGroup(group.rows[start:stop], group.indices[start:stop], mask, None,
                               band=int(group.indices[start, 0])))
    leftover = torch.nonzero(rest & ((group.rows + 1) * bs <= ctx.q_len)).view(-1)  # whole query tiles
    for run in _consecutive_runs(group.rows[leftover]):
        shared = _shared_window(group, leftover[run], mod, ctx, bs, n_kv) if run.numel() >= 2 else None
        if shared is not None:
            rest[leftover[run]] = False
            parts.append(shared)
    if not parts:
        return [group]
    if rest.any():
        mask = None if group.mask is None else group.mask[rest]
        parts.append(PlanGroup(group.rows[rest], group.indices[rest], mask, None))
    return parts


#: Bands shorter than this stay with the gathered rows (a separate kernel call would cost more than it saves).
MIN_BAND_ROWS = 4


def _row_groups(counts: torch.Tensor, widen: float = 2.0) -> list[torch.Tensor]:
    """Query-block rows grouped by how many key blocks they read: a group's widest row reads at most
    ``widen`` times its narrowest (so padding to the widest wastes at most that factor)."""
    order = torch.argsort(counts, stable=True)
    groups, start = [], 0
    sorted_counts = counts[order].tolist()
    for i in range(1, len(sorted_counts) + 1):
        if i == len(sorted_counts) or sorted_counts[i] > widen * max(sorted_counts[start], 1):
            groups.append(order[start:i].sort().values)
            start = i
    return groups


def _plan(layout: BlockLayout, mod: MaskMod, ctx: MaskContext, bs: int) -> BlockSparsePlan:
    n_q, n_kv = layout.active.shape[-2], layout.active.shape[-1]
    all_rows = torch.arange(n_q, device=layout.active.device)
    counts = layout.active.sum(-1)  # per-head (dynamic) layouts: a row's width is its widest head's
    row_sets = _row_groups(counts if counts.dim() == 1 else counts.flatten(0, -2).amax(0))
    groups = tuple(part for rows in row_sets
                   for part in _split_bands(_group(layout.active, rows, mod, ctx, bs), mod, ctx, bs, n_kv))
    concatenated = torch.cat([g.rows for g in groups])
    order = None if torch.equal(concatenated, all_rows) else torch.argsort(concatenated)
    return BlockSparsePlan(bs, n_q, n_kv, groups, order)


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
    """Drop the cached plans of fixed patterns (part of :func:`hf_sparse.kernels.clear_caches`)."""
    _static_plan.cache_clear()
