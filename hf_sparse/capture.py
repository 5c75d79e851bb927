"""Capturing what each self-attention layer of a model sees in a dense forward pass.

:func:`capture_attention` runs the model once with plain dense attention (SDPA, whatever the model is patched
with) and records, per self-attention module, the call's ``query``/``key``/``value``, the model's mask and
scaling. From a capture one recomputes the dense attention probabilities (the reference kernel with the
``dense`` pattern) and evaluates any pattern, fixed or data-dependent, on the very same ``q``/``k``: the
basis of attention-mass recall (:mod:`hf_sparse.lab.analysis.recall`) and of gate distillation
(:mod:`hf_sparse.learned.distill`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from .integration import register_attention
from .kernels import AttentionCall, reference_attention
from .kernels.call import combined_allowed, dynamic_allowed
from .learned.gate import gate_scope
from .models import check_supported, image_layout
from .patch import _configs
from .patterns import Dense, MaskContext, Pattern, allowed_matrix

CAPTURE_NAME = "hf_sparse_capture"


@dataclass
class CapturedAttention:
    """One self-attention call of a dense forward pass.

    Attributes:
        name / layer / module: the attention module, its layer index and the module itself.
        query ``[B, Hq, Lq, D]``, key / value ``[B, Hkv, Lk, D]``: the call's tensors (detached).
        attention_mask: the model's mask as the attention function received it (``None``, boolean
            ``True`` = attend, or additive float), broadcastable to ``[B, Hq, Lq, Lk]``.
        scale: the score scale (``None`` = ``D ** -0.5``); causal: the module is causal.
        position_bias: additive bias (T5) or ``None``.
    """

    name: str
    layer: int | None
    module: torch.nn.Module
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attention_mask: torch.Tensor | None
    scale: float | None
    causal: bool
    position_bias: torch.Tensor | None = None
    image_grid: tuple[int, int] | None = None
    num_prefix: int | None = None

    @property
    def ctx(self) -> MaskContext:
        """The call's shape as a sparse pattern would see it (causality from the module)."""
        q_len, kv_len = self.query.shape[2], self.key.shape[2]
        return MaskContext(q_len, kv_len, kv_len - q_len, causal=self.causal, image_grid=self.image_grid,
                           num_prefix=self.num_prefix)

    def _call(self, pattern: Pattern, causal: bool, block_size: int | None = None, weights: bool = False) -> AttentionCall:
        ctx = self.ctx
        ctx = MaskContext(ctx.q_len, ctx.kv_len, ctx.q_offset, causal, ctx.image_grid, ctx.num_prefix)
        return AttentionCall(query=self.query, key=self.key, value=self.value, pattern=pattern, ctx=ctx,
                             attention_mask=self.attention_mask, scale=self.scale, position_bias=self.position_bias,
                             need_weights=weights, block_size=block_size)

    @property
    def _mask_causal(self) -> bool:
        # As SDPA applies it: an explicit mask carries causality; otherwise the module's flag (if Lq > 1).
        return self.causal and self.attention_mask is None and self.query.shape[2] > 1

    def dense_probs(self) -> torch.Tensor:
        """The dense model's attention probabilities ``[B, Hq, Lq, Lk]`` (float32, rows sum to 1)."""
        _, probs = reference_attention(self._call(Dense(), self._mask_causal, weights=True))
        return probs.float()

    def model_allowed(self) -> torch.Tensor:
        """Boolean mask broadcastable to ``[B, Hq, Lq, Lk]``: pairs the dense model attends (its mask and
        causality)."""
        call = self._call(Dense(), self._mask_causal)
        if call.attention_mask is not None and not call.has_bool_model_mask:
            call.attention_mask = call.attention_mask > torch.finfo(call.attention_mask.dtype).min / 2
        return combined_allowed(call)

    def pattern_allowed(self, pattern: Pattern, block_size: int | None = None) -> torch.Tensor:
        """Boolean mask broadcastable to ``[B, Hq, Lq, Lk]``: pairs ``pattern`` keeps on this call's ``q``/``k``
        (the pattern alone, causality included, not the model's padding). Data-dependent patterns are bound
        exactly as the kernels bind them; a ``learned_gate`` uses this module's gate."""
        call = self._call(pattern, self.causal, block_size)
        if not pattern.dynamic:
            return allowed_matrix(pattern, call.ctx, self.query.device)
        with gate_scope(self.module):
            return dynamic_allowed(call)


def _capture_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                     position_bias=None, **kwargs):
    records: dict[int, tuple[str, int | None, list]] | None = _RECORDING.get("targets")
    target = records.get(id(module)) if records is not None else None
    if target is not None:
        name, layer, sink = target
        causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", False))
        grid, prefix = _RECORDING.get("layout") or (None, None)
        sink.append(CapturedAttention(
            name=name, layer=layer, module=module, query=query.detach(), key=key.detach(), value=value.detach(),
            attention_mask=attention_mask, scale=scaling, causal=causal,
            position_bias=None if position_bias is None else position_bias.detach(), image_grid=grid, num_prefix=prefix,
        ))
    kwargs.pop("output_attentions", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, position_bias=position_bias, **kwargs)


_RECORDING: dict[str, Any] = {}
register_attention(CAPTURE_NAME, _capture_forward, sdpa_mask)


@contextlib.contextmanager
def _dense_capture(model: torch.nn.Module, sink: list) -> Iterator[None]:
    sites = [s for s in check_supported(model) if not s.cross]
    originals = [(cfg, cfg._attn_implementation_internal) for cfg in _configs(model)]
    _RECORDING["targets"] = {id(s.module): (s.name, s.layer, sink) for s in sites}
    _RECORDING["layout"] = image_layout(model)
    try:
        model.set_attn_implementation(CAPTURE_NAME)
        yield
    finally:
        for cfg, original in originals:
            cfg._attn_implementation_internal = original
        _RECORDING.clear()


def capture_attention(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[CapturedAttention]:
    """Run ``model(**inputs)`` once with dense attention and return each self-attention call, in call order.

    The model's own attention settings (patched or not) are restored afterwards; its outputs during the
    capture are those of the dense model (SDPA).
    """
    sink: list[CapturedAttention] = []
    with torch.no_grad(), _dense_capture(model, sink):
        model(**inputs)
    if not sink:
        raise ValueError(f"no self-attention call of {type(model).__name__} was captured; is the input empty?")
    return sink
