"""What every kernel receives: one attention call, plus the mask helpers the dense kernels share.

Tensor layouts (the SDPA convention):
    query ``[B, Hq, Lq, D]``, key ``[B, Hkv, Lk, D]``, value ``[B, Hkv, Lk, Dv]`` with ``Hq % Hkv == 0``;
    kernels return ``out [B, Hq, Lq, Dv]`` and, when asked, ``weights [B, Hq, Lq, Lk]``.

Mask semantics: a pair ``(i, j)`` takes part in attention iff the pattern allows it (causality included,
see :class:`~hf_sparse.patterns.MaskContext`) AND the model's own mask allows it. The model's mask is
``None``, a boolean tensor broadcastable to ``[B, Hq, Lq, Lk]`` (``True`` = attend, Transformers' SDPA
convention) or a float tensor of the same shape added to the scores (``-inf``/``finfo.min`` = masked).
``position_bias`` (T5) is an additive float tensor of the same shape. A query row with no allowed key
returns zeros, never NaN.

Padding: in each batch row, positions count from the row's first real token, the first key the model's mask
lets any query of that row attend (:func:`first_real_positions`). With left padding that token is at
``offset_b > 0``, and a fixed pattern is evaluated at ``(q - offset_b, kv - offset_b)`` (bound to the call's
:class:`MaskContext`); pairs with either position before ``offset_b`` are not allowed, so the pad query rows
return zeros. Without a mask, with right padding or with no row padded on the left every offset is 0 and nothing
changes. Data-dependent patterns keep absolute positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..patterns import BlockLayout, MaskContext, MaskMod, Pattern, allowed_matrix, bound_mask_mod
from ..patterns.materialize import CHUNK_ELEMENTS

#: Tile edge of block-sparse computation when neither the call nor the pattern names one: ``SHORT_BLOCK`` below
#: ``LONG_LENGTH`` tokens, ``LONG_BLOCK`` from it.
SHORT_BLOCK, LONG_BLOCK, LONG_LENGTH = 64, 128, 2048


def kernel_block_size(block_size: int | None, pattern: Pattern, q_len: int, kv_len: int) -> int:
    """The tile edge block-sparse kernels use for a ``q_len`` x ``kv_len`` call: ``block_size`` (the config's
    ``kernel_block_size``) if given, else the pattern's own ``block_size``, else ``SHORT_BLOCK`` when the longer of
    ``q_len`` and ``kv_len`` is under ``LONG_LENGTH`` tokens and ``LONG_BLOCK`` from it."""
    if block_size is not None:
        return block_size
    own = getattr(pattern, "block_size", None)
    if own:
        return own
    return LONG_BLOCK if max(q_len, kv_len) >= LONG_LENGTH else SHORT_BLOCK


@dataclass
class AttentionCall:
    """One sparse attention call; see the module docstring for layouts and mask semantics."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    pattern: Pattern
    ctx: MaskContext
    attention_mask: torch.Tensor | None = None
    scale: float | None = None
    dropout_p: float = 0.0
    position_bias: torch.Tensor | None = None
    need_weights: bool = False
    block_size: int | None = None
    _binding: tuple[MaskMod, BlockLayout] | None = field(default=None, init=False, repr=False)
    #: Per-call memo for kernels (e.g. the block-sparse plan), so auto and the kernel build it once.
    cache: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def tile_size(self) -> int:
        """Block size of block-sparse computation (see :func:`kernel_block_size`)."""
        return kernel_block_size(self.block_size, self.pattern, self.ctx.q_len, self.ctx.kv_len)

    def dynamic_binding(self) -> tuple[MaskMod, BlockLayout]:
        """``pattern.bind_dynamic`` for this call's tensors, computed once per call."""
        if self._binding is None:
            self._binding = self.pattern.bind_dynamic(self.query, self.key, self.ctx, self.tile_size)
        return self._binding

    @property
    def scale_value(self) -> float:
        return self.scale if self.scale is not None else self.query.shape[-1] ** -0.5

    @property
    def needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(
            t.requires_grad for t in (self.query, self.key, self.value) if t is not None
        )

    @property
    def has_bool_model_mask(self) -> bool:
        return self.attention_mask is not None and self.attention_mask.dtype == torch.bool

    def row_offsets(self) -> torch.Tensor | None:
        """``[B]`` int64 position of each batch row's first real token (see the module docstring), or ``None`` when
        positions need no shift: no model mask, a data-dependent pattern, or (outside ``torch.compile``) every
        offset 0. While compiling the tensor is returned whenever there is a mask, since testing its values
        would be a data-dependent branch; the kernels then take their per-row path, which gives the same result."""
        if "row_offsets" not in self.cache:
            offsets = None
            if self.attention_mask is not None and not self.pattern.dynamic:
                offsets = first_real_positions(self.attention_mask, self.query.shape[0])
                if not torch.compiler.is_compiling() and not bool(offsets.any()):
                    offsets = None
            self.cache["row_offsets"] = offsets
        return self.cache["row_offsets"]


def first_real_positions(mask: torch.Tensor, batch: int) -> torch.Tensor:
    """``[batch]`` int64: per batch row, the first key that ``mask`` (boolean ``True`` = attend, or additive float
    with ``finfo.min``/``-inf`` = masked; broadcastable to ``[B, H, Lq, Lk]``) lets any query attend; 0 for a row
    that attends nothing."""
    keep = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min
    keep = keep.reshape((1,) * (4 - keep.dim()) + tuple(keep.shape)) if keep.dim() < 4 else keep
    seen = keep.any(dim=2).any(dim=1)                                   # [B or 1, Lk]
    first = torch.where(seen.any(-1), seen.to(torch.int8).argmax(-1), torch.zeros((), dtype=torch.long,
                                                                                  device=mask.device))
    return first.expand(batch) if first.shape[0] != batch else first


def shifted_allowed(pattern: Pattern, ctx: MaskContext, offsets: torch.Tensor) -> torch.Tensor:
    """``[B, 1, Lq, Lk]`` bool: ``pattern`` bound to ``ctx`` with row ``b``'s positions counted from
    ``offsets[b]``; pairs with either position before ``offsets[b]`` are not allowed."""
    mod = bound_mask_mod(pattern, ctx)
    dev = offsets.device
    zero = torch.zeros((), dtype=torch.long, device=dev)
    kv = torch.arange(ctx.kv_len, device=dev)[None, :]
    step = max(1, CHUNK_ELEMENTS // max(ctx.kv_len, 1))
    rows = []
    for b in range(offsets.shape[0]):  # one row at a time bounds the mask function's int64 intermediates
        off = offsets[b]
        k = kv - off
        for start in range(0, ctx.q_len, step):
            q = torch.arange(start, min(start + step, ctx.q_len), device=dev)[:, None] + (ctx.q_offset - off)
            allowed = mod(zero, zero, q.clamp(min=0), k.clamp(min=0)) & (q >= 0) & (k >= 0)
            rows.append(allowed.expand(q.shape[0], ctx.kv_len))
    if not rows:
        return torch.zeros(offsets.shape[0], 1, ctx.q_len, ctx.kv_len, dtype=torch.bool, device=dev)
    return torch.cat(rows, dim=0).view(offsets.shape[0], 1, ctx.q_len, ctx.kv_len)


def expand_kv_heads(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value repeated to the query's head count (grouped-query attention)."""
    hq, hkv = call.query.shape[1], call.key.shape[1]
    if hq == hkv:
        return call.key, call.value
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of key/value heads ({hkv})")
    rep = hq // hkv
    return call.key.repeat_interleave(rep, dim=1), call.value.repeat_interleave(rep, dim=1)


def dynamic_allowed(call: AttentionCall) -> torch.Tensor:
    """``[B, Hq, Lq, Lk]`` boolean mask of a data-dependent pattern, evaluated from its bound mask function."""
    mask_mod, _ = call.dynamic_binding()
    dev = call.query.device
    b = torch.arange(call.query.shape[0], device=dev)[:, None, None, None]
    h = torch.arange(call.query.shape[1], device=dev)[None, :, None, None]
    q_idx = (torch.arange(call.ctx.q_len, device=dev) + call.ctx.q_offset)[None, None, :, None]
    kv_idx = torch.arange(call.ctx.kv_len, device=dev)[None, None, None, :]
    return mask_mod(b, h, q_idx, kv_idx).expand(b.shape[0], h.shape[1], q_idx.shape[2], kv_idx.shape[3])


def combined_allowed(call: AttentionCall) -> torch.Tensor:
    """Boolean mask broadcastable to ``[B, Hq, Lq, Lk]``: pattern AND the model's boolean mask."""
    offsets = call.row_offsets()
    if call.pattern.dynamic:
        allowed = dynamic_allowed(call)
    elif offsets is not None:
        allowed = shifted_allowed(call.pattern, call.ctx, offsets.to(call.query.device))
    else:
        allowed = allowed_matrix(call.pattern, call.ctx, call.query.device)
    if call.has_bool_model_mask:
        allowed = allowed & call.attention_mask
    return allowed


def additive_bias(call: AttentionCall) -> torch.Tensor | None:
    """Float terms added to the scores: the model's float mask and ``position_bias`` (or ``None``)."""
    bias = None
    if call.attention_mask is not None and not call.has_bool_model_mask:
        bias = call.attention_mask
    if call.position_bias is not None:
        bias = call.position_bias if bias is None else bias + call.position_bias
    return bias
