"""``learned_gate``: block routing scored by a small trainable module per attention layer.

``patch_model(model, "learned_gate", block_size=32, k=2)`` adds a :class:`BlockGate` to every patched
attention module as ``module.hf_sparse_gate`` (so its parameters are in ``model.state_dict()`` and saved by
``save_pretrained``); ``unpatch_model`` removes it. The gate predicts, from the block-pooled queries and
keys, how much dense attention mass each key block would get; ``hf-sparse train-gate`` fits it to the
dense model's block-pooled attention (:mod:`hf_sparse.learned.distill`). An untrained gate ranks blocks
exactly like ``topk_blocks`` (identity projections, zero biases).

The selection is discrete: the gate learns from distillation only, never from the task loss.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..patterns import MaskContext, register_pattern
from ..patterns.base import check_int
from .select import block_counts, expand_kv_heads, n_blocks, pool_blocks, row_geometry
from .topk import RoutedBlocks

GATE_ATTR = "hf_sparse_gate"
_HOOKS_ATTR = "_hf_sparse_gate_hooks"
_CURRENT: contextvars.ContextVar[nn.Module | None] = contextvars.ContextVar("hf_sparse_gate_module", default=None)


class BlockGate(nn.Module):
    """Predicts block importance for one attention layer.

    ``score[b, h, qb, kb] = (A_h q̄)·(B_g k̄) / sqrt(D) + log n_kb + distance_bias[h, kb - anchor(qb)]
    + first_bias[h]·[kb = 0]`` where ``q̄``/``k̄`` are the block means of queries/keys, ``g`` the key/value
    head of query head ``h``, ``n_kb`` the number of real keys in block ``kb`` and the distance is clipped to
    ``±max_distance`` blocks. ``softmax`` over ``kb`` is the predicted share of the query block's attention.

    Parameters: ``q_proj [Hq, D, D]``, ``k_proj [Hkv, D, D]`` (identity at start), ``distance_bias
    [Hq, 2·max_distance + 1]``, ``first_bias [Hq]`` (zero at start; it only matters with ``num_global=0``, since
    global blocks are kept anyway, e.g. to learn an attention-sink first block).
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, max_distance: int = 8) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.max_distance = max_distance
        eye = torch.eye(head_dim)
        self.q_proj = nn.Parameter(eye.repeat(num_heads, 1, 1))
        self.k_proj = nn.Parameter(eye.repeat(num_kv_heads, 1, 1))
        self.distance_bias = nn.Parameter(torch.zeros(num_heads, 2 * max_distance + 1))
        self.first_bias = nn.Parameter(torch.zeros(num_heads))

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
                f"max_distance={self.max_distance}")

    def forward(self, query: torch.Tensor, key: torch.Tensor, ctx: MaskContext, block_size: int) -> torch.Tensor:
        """Scores ``[B, Hq, nq, nkv]`` (float32) from ``query [B, Hq, Lq, D]`` and ``key [B, Hkv, Lk, D]``."""
        return self.score_pooled(pool_blocks(query, block_size), pool_blocks(key, block_size), ctx, block_size)

    def score_pooled(self, q_mean: torch.Tensor, k_mean: torch.Tensor, ctx: MaskContext, block_size: int) -> torch.Tensor:
        """Scores from block means ``q_mean [B, Hq, nq, D]`` and ``k_mean [B, Hkv, nkv, D]`` (see the class)."""
        hq, hkv, d = q_mean.shape[1], k_mean.shape[1], q_mean.shape[-1]
        if (hq, hkv, d) != (self.num_heads, self.num_kv_heads, self.head_dim):
            raise ValueError(
                f"learned_gate: this gate was built for {self.num_heads} query heads, {self.num_kv_heads} key/value "
                f"heads and head_dim {self.head_dim}, but the call has {hq}, {hkv} and {d}"
            )
        dev = q_mean.device
        q = torch.einsum("bhnd,hed->bhne", q_mean.float(), self.q_proj.float())
        k = torch.einsum("bhnd,hed->bhne", k_mean.float(), self.k_proj.float())
        scores = q @ expand_kv_heads(k, hq).transpose(-1, -2) * d ** -0.5
        nkv = n_blocks(ctx.kv_len, block_size)
        anchor = row_geometry(ctx, block_size, 1, 0, dev).anchor
        distance = (torch.arange(nkv, device=dev)[None, :] - anchor[:, None]).clamp(
            -self.max_distance, self.max_distance) + self.max_distance
        first = (torch.arange(nkv, device=dev) == 0).float()
        bias = self.distance_bias.float()[:, distance] + self.first_bias.float()[:, None, None] * first
        return scores + bias + block_counts(ctx.kv_len, block_size, dev).log()


def head_shape(module: nn.Module) -> tuple[int, int, int]:
    """``(query heads, key/value heads, head_dim)`` of a Transformers attention module."""
    config = getattr(module, "config", None)

    def first(*candidates):
        for owner, attr in candidates:
            value = getattr(owner, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    heads = first((module, "num_heads"), (module, "num_attention_heads"), (module, "n_heads"), (module, "n_head"),
                  (config, "num_attention_heads"))
    head_dim = first((module, "head_dim"), (module, "attention_head_size"), (module, "key_value_proj_dim"),
                     (config, "head_dim"))
    if head_dim is None and heads is not None:
        hidden = first((config, "hidden_size"), (config, "d_model"))
        head_dim = hidden // heads if hidden else None
    if heads is None or head_dim is None:
        raise ValueError(f"learned_gate cannot read the head count / head size of {type(module).__name__}; "
                         "use topk_blocks for this model")
    kv_heads = first((module, "num_key_value_heads"), (config, "num_key_value_heads")) or heads
    groups = first((module, "num_key_value_groups"),)
    if groups is not None:
        kv_heads = heads // groups
    return heads, kv_heads, head_dim


def _enter(module: nn.Module, args) -> None:
    module._hf_sparse_gate_tokens.append(_CURRENT.set(module))


def _leave(module: nn.Module, args, output) -> None:
    tokens = module._hf_sparse_gate_tokens
    if tokens:
        _CURRENT.reset(tokens.pop())


@contextlib.contextmanager
def gate_scope(module: nn.Module) -> Iterator[None]:
    """Make ``module``'s gate the one ``learned_gate`` uses, for direct calls outside the module's forward
    (e.g. ``sparse_attention`` on captured tensors). Patched modules do this themselves on each forward."""
    token = _CURRENT.set(module)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_gate() -> BlockGate:
    """The gate of the attention module being run (or the one set by :func:`gate_scope`)."""
    module = _CURRENT.get()
    gate = getattr(module, GATE_ATTR, None) if module is not None else None
    if not isinstance(gate, BlockGate):
        raise ValueError(
            "learned_gate needs the gate of its attention module: patch a model with "
            "patch_model(model, 'learned_gate', ...), or wrap direct calls in hf_sparse.learned.gate_scope(module)"
        )
    return gate


@register_pattern
@dataclass(frozen=True)
class LearnedGate(RoutedBlocks):
    """Block routing scored by each layer's trained :class:`BlockGate` (options as ``topk_blocks``, plus
    ``max_distance``: the clip of the gate's relative-distance bias, in blocks)."""

    name: ClassVar[str] = "learned_gate"
    max_distance: int = 8

    def _validate(self) -> None:
        super()._validate()
        check_int(self.name, "max_distance", self.max_distance, minimum=0)

    def block_scores(self, query: torch.Tensor, key: torch.Tensor, ctx: MaskContext) -> torch.Tensor:
        return current_gate()(query, key, ctx, self.block_size)

    def attach(self, module: nn.Module) -> None:
        """Add a fresh :class:`BlockGate` (identity start) and the hooks that make it current during forward."""
        self.detach(module)
        heads, kv_heads, head_dim = head_shape(module)
        ref = next(module.parameters(), None)
        gate = BlockGate(heads, kv_heads, head_dim, self.max_distance)
        if ref is not None:
            gate = gate.to(device=ref.device, dtype=ref.dtype if ref.dtype.is_floating_point else None)
        setattr(module, GATE_ATTR, gate)
        module._hf_sparse_gate_tokens = []
        handles = (module.register_forward_pre_hook(_enter),
                   module.register_forward_hook(_leave, always_call=True))
        setattr(module, _HOOKS_ATTR, handles)

    def detach(self, module: nn.Module) -> None:
        for handle in getattr(module, _HOOKS_ATTR, ()):
            handle.remove()
        for attr in (_HOOKS_ATTR, "_hf_sparse_gate_tokens"):
            if hasattr(module, attr):
                delattr(module, attr)
        if isinstance(getattr(module, GATE_ATTR, None), nn.Module):
            delattr(module, GATE_ATTR)


def gates(model: nn.Module) -> dict[str, BlockGate]:
    """``{attention module name: its gate}`` for every module carrying a ``learned_gate``."""
    return {name: getattr(m, GATE_ATTR) for name, m in model.named_modules()
            if isinstance(getattr(m, GATE_ATTR, None), BlockGate)}
