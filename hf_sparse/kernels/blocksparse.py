"""The block-sparse kernel: gather the key/value blocks each query block needs, then let the fused SDPA
kernel do the math with the query blocks folded into a batch dimension.

Layouts: query ``[B, H, Lq, D]`` is viewed as ``[B*H, nq, bs, D]``; keys/values are gathered into
``[B*H, nq, K*bs, D]`` (``K`` slots per query block, see :mod:`hf_sparse.kernels.plan`); SDPA runs on these
4-D tensors (the layout PyTorch's fused CPU kernel takes) with a ``[.., nq, bs, K*bs]`` mask only where a
tile is partial, a slot is empty, the model masks padding, or a bias is added. On CPU without dropout,
training goes through :mod:`hf_sparse.kernels.cpu_flash`, which re-gathers in backward instead of keeping
the gathered copies; elsewhere autograd differentiates the gather (an ``index_add`` in backward), so
training works on every device SDPA supports. Work scales with ``K * bs / Lk``, the fraction of key blocks
gathered, instead of with ``Lq * Lk``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..patterns import MaskContext, MaskMod, Pattern, bound_mask_mod
from . import cpu_flash, cpu_work
from .call import AttentionCall, additive_bias, expand_kv_heads
from .plan import BlockSparsePlan, PlanGroup, additive, dynamic_plan, static_plan


@dataclass(frozen=True)
class _BoundTo(Pattern):
    """``pattern`` bound to another call's context ``at``: the mask of a left-padded row's real part, whose
    positions ``0, 1, ...`` are the full call's positions counted from the row's first real token."""

    name: ClassVar[str] = "bound_to"
    pattern: Pattern | None = None
    at: MaskContext | None = None

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        return bound_mask_mod(self.pattern, self.at)

    def describe(self) -> str:
        return self.pattern.describe()


def _rows_part(x: torch.Tensor | None, rows: torch.Tensor, q_start: int, kv_start: int) -> torch.Tensor | None:
    """A mask or bias broadcastable to ``[B, H, Lq, Lk]``: batch ``rows``, queries from ``q_start``, keys from
    ``kv_start`` (broadcast dimensions stay broadcast)."""
    if x is None:
        return None
    x = x.reshape((1,) * (4 - x.dim()) + tuple(x.shape)) if x.dim() < 4 else x
    if x.shape[0] != 1:
        x = x.index_select(0, rows)
    return x[:, :, q_start if x.shape[2] != 1 else 0:, kv_start:]


def _by_row_offset(call: AttentionCall, offsets: torch.Tensor) -> torch.Tensor:
    """Left-padded rows (``call.row_offsets()``): the rows sharing an offset run as one block-sparse call on their
    real part (keys from the offset, the queries at or after it) with the pattern bound to the full call's context,
    so positions count from the first real token; the pad query rows are zeros. Eager only (the offsets decide
    the split); under ``torch.compile`` the dispatcher runs an exact dense-masked kernel instead."""
    ctx = call.ctx
    batch, heads, q_len, _ = call.query.shape
    pieces, order = [], []
    for offset in sorted(set(offsets.tolist())):
        rows = (offsets == offset).nonzero().flatten().to(call.query.device)
        start = min(q_len, max(0, offset - ctx.q_offset))
        if start == q_len:  # every query of these rows is padding
            pieces.append(call.query.new_zeros(rows.numel(), heads, q_len, call.value.shape[-1]))
        else:
            sub = AttentionCall(
                query=call.query.index_select(0, rows)[:, :, start:],
                key=call.key.index_select(0, rows)[:, :, offset:], value=call.value.index_select(0, rows)[:, :, offset:],
                pattern=call.pattern if offset == 0 else _BoundTo(pattern=call.pattern, at=ctx),
                ctx=MaskContext(q_len - start, ctx.kv_len - offset, ctx.q_offset + start - offset, ctx.causal,
                                ctx.image_grid, ctx.num_prefix),
                attention_mask=_rows_part(call.attention_mask, rows, start, offset), scale=call.scale_value,
                dropout_p=call.dropout_p, position_bias=_rows_part(call.position_bias, rows, start, offset),
                block_size=call.tile_size,
            )
            sub.cache["row_offsets"] = None  # the real part starts at its first real token
            out, _ = blocksparse_attention(sub)
            pieces.append(F.pad(out, (0, 0, start, 0)))
        order.append(rows)
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return out.index_select(0, torch.argsort(torch.cat(order)))


def plan_for(call: AttentionCall) -> BlockSparsePlan:
    """The plan that serves ``call``: cached per shape for fixed patterns, once per call for dynamic ones."""
    if "plan" not in call.cache:
        if call.pattern.dynamic:
            mod, layout = call.dynamic_binding()
            call.cache["plan"] = dynamic_plan(mod, layout, call.ctx)
        else:
            call.cache["plan"] = static_plan(call.pattern, call.ctx, call.tile_size, call.query.device)
    return call.cache["plan"]


def _gather_tiles(x: torch.Tensor, plan: BlockSparsePlan, group: PlanGroup, rows_blocked: bool) -> torch.Tensor:
    """Gather the group's key-block tiles of a mask or bias ``x`` broadcastable to ``[B, H, Lq, Lk]``.

    Returns ``[b, h, nr, bs or 1, K*bs]`` (``b``/``h`` as in ``x``, or ``B``/``H`` for per-head plans).
    ``rows_blocked=False`` treats ``x`` as constant along queries (a key-padding mask).
    """
    bs, nq, nk = plan.block_size, plan.n_q_blocks, plan.n_kv_blocks
    fill = False if x.dtype == torch.bool else 0.0
    rows = x if rows_blocked else x[:, :, :1]
    rows = F.pad(rows, (0, (nk + 1) * bs - x.shape[-1], 0, (nq * bs - x.shape[-2]) if rows_blocked else 0), value=fill)
    r = bs if rows_blocked else 1
    tiles = rows.reshape(*rows.shape[:2], -1, r, nk + 1, bs).transpose(3, 4)  # [b, h, nq|1, nk+1, r, bs]
    idx = group.indices
    qb = group.rows if rows_blocked else torch.zeros_like(group.rows)
    if plan.per_head:
        b = torch.arange(idx.shape[0], device=idx.device).view(-1, 1, 1, 1) % tiles.shape[0]
        h = torch.arange(idx.shape[1], device=idx.device).view(1, -1, 1, 1) % tiles.shape[1]
        picked = tiles[b, h, qb.view(1, 1, -1, 1), idx]                          # [B, H, nr, K, r, bs]
    else:
        picked = tiles[:, :, qb.view(-1, 1), idx]                                # [b, h, nr, K, r, bs]
    return picked.transpose(3, 4).reshape(*picked.shape[:3], r, group.slots * bs)


def _model_tiles(call: AttentionCall, plan: BlockSparsePlan, group: PlanGroup):
    """The model's boolean mask and additive bias, gathered onto the group's tiles (or ``None``)."""
    allowed = bias = None
    mask = call.attention_mask
    if mask is not None and mask.dtype == torch.bool:
        key_padding_only = mask.shape[-2] == 1 or mask.stride(-2) == 0
        allowed = _gather_tiles(mask, plan, group, rows_blocked=not key_padding_only)
    extra = additive_bias(call)
    if extra is not None:
        bias = _gather_tiles(extra, plan, group, rows_blocked=extra.shape[-2] != 1 and extra.stride(-2) != 0)
    return allowed, bias


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x [..., L, D]`` zero-padded to ``rows`` rows (no copy when it already has them)."""
    return x if x.shape[-2] == rows else F.pad(x, (0, 0, 0, rows - x.shape[-2]))


def _lead(tiles: torch.Tensor) -> torch.Tensor:
    """A fixed plan's ``[nr, bs, K*bs]`` tiles with the ``[b, h]`` dims of a dynamic plan's (``[1, 1, ...]``)."""
    return tiles[None, None] if tiles.dim() == 3 else tiles


def _flat4(x: torch.Tensor, batch: int, heads: int, per_batch: bool = False) -> torch.Tensor:
    """``[b, h, nr, r, K*bs]`` mask/bias -> 4-D ``[1 or B*H, nr, r, K*bs]`` as the fused CPU kernel needs;
    ``per_batch=True`` keeps a mask shared by the heads as ``[B, nr, r, K*bs]`` (bands, which take one batch row
    at a time: no copy per head)."""
    if x.shape[0] == 1 and x.shape[1] == 1:
        return x[0]
    if per_batch and x.shape[1] == 1:
        return x.expand(batch, *x.shape[1:])[:, 0]
    return x.expand(batch, heads, *x.shape[2:]).reshape(batch * heads, *x.shape[2:])


def _group_mask(call: AttentionCall, plan: BlockSparsePlan, group: PlanGroup, batch: int, heads: int,
                fused: bool = False, per_batch: bool = False):
    """``(attn_mask 4-D or None, rows to zero or None)`` for one group: pattern tiles, model mask, bias. The mask
    is boolean (``True`` = allowed; for the pattern alone of a gathered group a view of the plan's tensor, shared
    by every layer) or, with a bias, additive in the query's dtype. ``fused=True`` (PyTorch's fused CPU kernel,
    which takes additive masks) and the pattern alone: a gathered group's mask comes as the plan's cached additive
    copy (:meth:`~hf_sparse.kernels.plan.PlanGroup.additive_tile_mask`), a band's or shared window's as its
    :class:`~hf_sparse.kernels.plan.TileMaskRecipe`, which the kernel builds when it runs the group.
    ``per_batch=True`` (a band run by :mod:`~hf_sparse.kernels.cpu_band`) keeps a model mask shared by the heads
    as ``[B, nr, r, K*bs]`` (see :func:`_flat4`)."""
    q_len, bs, nr = call.ctx.q_len, plan.block_size, group.rows.numel()
    model_allowed, bias = _model_tiles(call, plan, group)
    empty = group.empty_rows
    if fused and model_allowed is None and bias is None and group.mask is not None:
        if group.band is not None:
            return group.mask, empty  # a fixed plan's band or shared window: no empty rows
        allowed = _lead(group.additive_tile_mask(call.query.dtype))
    else:
        allowed = group.tile_mask
        allowed = None if allowed is None else _lead(allowed)
    if model_allowed is not None:
        allowed = model_allowed if allowed is None else allowed & model_allowed
        row_any = allowed.any(dim=-1, keepdim=True)
        allowed = allowed | ~row_any  # rows left with nothing are computed unmasked, then zeroed
        in_range = ((group.rows.view(-1, 1) * bs + torch.arange(bs, device=group.rows.device)) < q_len).view(nr, bs, 1)
        empty = ~row_any & in_range if empty is None else (~row_any & in_range) | empty
    attn_mask = allowed
    if bias is not None:
        attn_mask = bias.to(call.query.dtype)
        if allowed is not None:
            attn_mask = torch.where(allowed, attn_mask, torch.tensor(float("-inf"), dtype=call.query.dtype))
    if attn_mask is not None:
        attn_mask = _flat4(attn_mask, batch, heads, per_batch)
    if empty is not None and empty.dim() > 3:
        empty = _flat4(empty, batch, heads, per_batch)
    return attn_mask, empty


class _LayerMemo:
    """The group masks made from the last boolean model mask, reused by the next layers.

    A model passes one mask tensor to all its layers, so combining it with a plan's tiles (gather, ``&``, the
    empty rows and, for the fused CPU kernel, the additive form) is the same work in every layer; it is done for the
    first layer and reused while the same tensor (same object, same in-place version) comes back. A new mask drops
    the old results. Only fixed patterns without additive terms are kept (a data-dependent pattern has a new plan
    per call). The results are read-only: kernels never write into a mask."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.version = -1
        self.entries: dict[tuple, tuple[BlockSparsePlan, tuple]] = {}

    def group_mask(self, call: AttentionCall, plan: BlockSparsePlan, index: int, batch: int, heads: int,
                   fused: bool = False, per_batch: bool = False):
        """:func:`_group_mask` of ``plan.groups[index]``; with ``fused`` the mask comes additive in the query
        dtype (what the fused CPU kernel takes), converted once instead of per call."""
        group, mask = plan.groups[index], call.attention_mask
        if mask is None or call.pattern.dynamic or additive_bias(call) is not None or mask.is_inference():
            return _group_mask(call, plan, group, batch, heads, fused, per_batch)  # (no version counter to check)
        if self.mask is not mask or self.version != mask._version:
            self.mask, self.version, self.entries = mask, mask._version, {}
        key = (id(plan), index, batch, heads, fused, per_batch, call.query.dtype)
        if key not in self.entries:  # the plan is kept with its entry, so its id is not reused meanwhile
            attn_mask, empty = _group_mask(call, plan, group, batch, heads, fused, per_batch)
            if fused and isinstance(attn_mask, torch.Tensor):
                attn_mask = additive(attn_mask, call.query.dtype)
            self.entries[key] = (plan, (attn_mask, empty))
        return self.entries[key][1]

    def clear(self) -> None:
        self.mask, self.version, self.entries = None, -1, {}


_MEMO = _LayerMemo()


def clear_layer_memo() -> None:
    """Drop the group masks kept for the last model mask (part of :func:`hf_sparse.kernels.clear_caches`)."""
    _MEMO.clear()


def blocksparse_attention(call: AttentionCall) -> tuple[torch.Tensor, None]:
    """Block-sparse attention; exact for every pattern (see :mod:`hf_sparse.kernels.call` for semantics).

    For each row group of the plan, the fused SDPA kernel runs on 4-D tensors ``[B*H, nr, bs, D]`` x
    ``[B*H, nr, K*bs, D]`` (a 4-D mask keeps PyTorch's CPU flash kernel, with its backward, instead of the
    unfused math path). Left-padded rows (``call.row_offsets()``) run per offset (:func:`_by_row_offset`).
    Returns ``(out [B, Hq, Lq, Dv], None)``.
    """
    offsets = None if call.pattern.dynamic else call.row_offsets()
    if offsets is not None:
        return _by_row_offset(call, offsets), None
    plan = plan_for(call)
    query = call.query
    key, value = expand_kv_heads(call)
    batch, heads, q_len, dim = query.shape
    dim_v = value.shape[-1]
    bs, nq, nk = plan.block_size, plan.n_q_blocks, plan.n_kv_blocks
    n = batch * heads

    base = torch.arange(n, device=query.device).view(batch, heads, 1, 1) * nk
    # [B, H, nk, bs, D] views (no copy unless the length is padded)
    k_blocks = _pad_rows(key, nk * bs).view(batch, heads, nk, bs, dim)
    v_blocks = _pad_rows(value, nk * bs).view(batch, heads, nk, bs, dim_v)
    bias_needs_grad = any(t is not None and t.requires_grad for t in (call.attention_mask, call.position_bias))
    if cpu_work.available(query, call.dropout_p, dim_v, bias_needs_grad):
        unit_stride = query.stride(-1) == k_blocks.stride(-1) == v_blocks.stride(-1) == 1  # bands read views
        works = []
        for i, group in enumerate(plan.groups):
            band = group.band if unit_stride else None
            index = None if band is not None else (base + group.gather_indices(nk)).reshape(-1)
            works.append(cpu_work.GroupWork(group.rows, group.slots, index,
                                            *_MEMO.group_mask(call, plan, i, batch, heads, fused=True,
                                                              per_batch=band is not None),
                                            band=band, band_step=group.band_step))
        args = (query, k_blocks, v_blocks, works, call.scale_value, bs, nq)
        if call.needs_grad:
            out = cpu_flash.GatheredFlashAttention.apply(*args)
        else:  # nothing to differentiate: no log-sum-exp kept, band rows may take the matmul path
            out, _ = cpu_flash.fused_forward(*args, keep_lse=False)
        return out[:, :q_len].transpose(1, 2), None  # [B, Lq, H, D] storage: the model's transpose is free
    q = _pad_rows(query, nq * bs).reshape(n, nq, bs, dim)
    k_flat, v_flat = k_blocks.reshape(n * nk, bs, dim), v_blocks.reshape(n * nk, bs, dim_v)
    outs = []
    for i, group in enumerate(plan.groups):
        nr, width = group.rows.numel(), group.slots
        q_g = q if nr == nq else q.index_select(1, group.rows)
        gather = (base + group.gather_indices(nk)).reshape(-1)
        attn_mask, empty = _MEMO.group_mask(call, plan, i, batch, heads)
        k = k_flat.index_select(0, gather).view(n, nr, width * bs, dim)
        v = v_flat.index_select(0, gather).view(n, nr, width * bs, dim_v)
        out = F.scaled_dot_product_attention(q_g, k, v, attn_mask=attn_mask, dropout_p=call.dropout_p,
                                             scale=call.scale_value)
        if empty is not None:
            out = out.masked_fill(empty, 0.0)
        outs.append(out)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    if plan.order is not None:
        out = out.index_select(1, plan.order)
    return out.reshape(batch, heads, nq * bs, dim_v)[:, :, :q_len], None
