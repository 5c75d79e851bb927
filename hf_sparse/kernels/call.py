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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..patterns import BlockLayout, MaskContext, MaskMod, Pattern, allowed_matrix

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
    if call.pattern.dynamic:
        allowed = dynamic_allowed(call)
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
