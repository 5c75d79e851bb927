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
import contextvars
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from .integration import attention_implementation, register_attention, resolve_causal
from .kernels import AttentionCall, reference_attention
from .kernels.call import combined_allowed, dynamic_allowed
from .learned.gate import gate_scope
from .models import check_supported, image_layout
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
        return resolve_causal(self.causal, attention_mask=self.attention_mask, q_len=self.query.shape[2])

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


@dataclass(frozen=True)
class _Target:
    """Where a captured module's calls go: its name and layer, the image layout of its model, the capture's list."""

    name: str
    layer: int | None
    layout: tuple[tuple[int, int], int] | None
    sink: list


#: ``{id(module): target}`` of every capture in progress in this context; each capture sets its own modules on top
#: of the enclosing captures' (an inner capture of the same model takes its calls) and resets the map on exit.
_TARGETS: contextvars.ContextVar[Mapping[int, _Target]] = contextvars.ContextVar(
    "hf_sparse_capture", default=types.MappingProxyType({}))


def _capture_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                     position_bias=None, **kwargs):
    target = _TARGETS.get().get(id(module))
    if target is not None:
        grid, prefix = target.layout or (None, None)
        target.sink.append(CapturedAttention(
            name=target.name, layer=target.layer, module=module, query=query.detach(), key=key.detach(),
            value=value.detach(), attention_mask=attention_mask, scale=scaling, causal=resolve_causal(is_causal, module),
            position_bias=None if position_bias is None else position_bias.detach(), image_grid=grid, num_prefix=prefix,
        ))
    kwargs.pop("output_attentions", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, position_bias=position_bias, **kwargs)


register_attention(CAPTURE_NAME, _capture_forward, sdpa_mask)


@contextlib.contextmanager
def _dense_capture(model: torch.nn.Module, sink: list) -> Iterator[None]:
    sites = [s for s in check_supported(model) if not s.cross]
    layout = image_layout(model)
    targets = {id(s.module): _Target(s.name, s.layer, layout, sink) for s in sites}
    token = _TARGETS.set({**_TARGETS.get(), **targets})
    try:
        with attention_implementation(model, CAPTURE_NAME):
            yield
    finally:
        _TARGETS.reset(token)


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
