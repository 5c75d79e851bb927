"""The one kernel dispatcher: a registry of backends, the ``auto`` choice, and ``sparse_attention``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._logging import log_once
from ..patterns import MaskContext, Pattern, as_pattern
from .blocksparse import blocksparse_attention, plan_for
from .call import AttentionCall
from .flex import flex_attention_backend, flex_unsupported
from .masked_sdpa import masked_sdpa_attention
from .reference import reference_attention

KernelFn = Callable[[AttentionCall], tuple[torch.Tensor, "torch.Tensor | None"]]


@dataclass(frozen=True)
class Backend:
    """A kernel and the test of whether it can serve a call.

    Attributes:
        name: what users pass as ``backend=``.
        run: the kernel; returns ``(out [B, Hq, Lq, Dv], weights or None)``.
        unsupported: returns ``None`` if the kernel computes ``call`` exactly, else the reason it cannot.
        returns_weights: whether ``run`` can return attention weights.
    """

    name: str
    run: KernelFn
    unsupported: Callable[[AttentionCall], str | None] = lambda call: None
    returns_weights: bool = False


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a backend in the registry."""
    BACKENDS[backend.name] = backend
    return backend


register_backend(Backend("reference", reference_attention, returns_weights=True))
register_backend(Backend("masked_sdpa", masked_sdpa_attention))
register_backend(Backend("blocksparse", blocksparse_attention))
register_backend(Backend("flex", flex_attention_backend, unsupported=flex_unsupported))


def backend_names() -> list[str]:
    return ["auto", *sorted(BACKENDS)]


def _auto(call: AttentionCall) -> tuple[str, str]:
    """The fastest registered backend that is exact for ``call``, with the reason for the choice."""
    if call.need_weights:
        return "reference", "attention weights were requested"
    for chooser in AUTO_RULES:
        choice = chooser(call)
        if choice is not None:
            return choice
    return "masked_sdpa", (f"the sequence is too short (< {BLOCKSPARSE_MIN_LENGTH} keys) or the pattern too dense "
                           f"(> {BLOCKSPARSE_MAX_FRACTION:.0%} of tiles) for gathering blocks to pay")


#: Gathering blocks pays once at most this fraction of the attention tiles is computed. Measured on a 2-core CPU
#: (results/bench_kernels): 0.63-0.92x dense SDPA at 44-56% of tiles, 1.3-1.7x at 100%.
BLOCKSPARSE_MAX_FRACTION = 0.6


#: Below this many keys the gathers and small tiles cost more than they save. Measured on a 2-core CPU
#: (sliding_window at 12% density, 64-token tiles, results/bench_kernels/short_512): at 512 tokens fwd+bwd
#: 0.74-0.78x the dense SDPA time, forward alone 0.94-1.35x (break-even, tiny times, two runs); training a
#: ViT at 197 tokens with 16-token tiles ran at 0.45-0.61x the dense throughput (the study, before this rule).
BLOCKSPARSE_MIN_LENGTH = 512


def _sparse_enough(call: AttentionCall) -> str | None:
    """A description of the saving if block-sparse computation pays for ``call``, else ``None``."""
    if call.ctx.kv_len < BLOCKSPARSE_MIN_LENGTH:
        return None
    fraction = plan_for(call).computed_fraction
    if fraction <= BLOCKSPARSE_MAX_FRACTION:
        return f"it computes {fraction:.0%} of the key blocks"
    return None


def _flex_rule(call: AttentionCall) -> tuple[str, str] | None:
    """On CUDA, FlexAttention (Triton) is the maintained fast path where it applies."""
    if call.query.device.type != "cuda" or flex_unsupported(call) is not None:
        return None
    saving = _sparse_enough(call)
    return ("flex", f"CUDA, {saving}") if saving else None


def _blocksparse_rule(call: AttentionCall) -> tuple[str, str] | None:
    saving = _sparse_enough(call)
    return ("blocksparse", saving) if saving else None


#: Ordered rules consulted by ``auto``; each returns ``(backend, reason)`` or ``None`` to pass.
AUTO_RULES: list[Callable[[AttentionCall], tuple[str, str] | None]] = [_flex_rule, _blocksparse_rule]


def choose_backend(call: AttentionCall, backend: str = "auto") -> str:
    """Resolve ``backend`` for ``call``: validate an explicit choice, or apply the ``auto`` rules.

    Raises:
        ValueError: unknown backend name, or an explicit backend that cannot compute this call exactly.
    """
    if backend == "auto":
        name, reason = _auto(call)
        log_once(f"hf_sparse: backend 'auto' chose '{name}' ({reason}) for {call.pattern.describe()}")
        return name
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(backend_names())}")
    chosen = BACKENDS[backend]
    if call.need_weights and not chosen.returns_weights:
        log_once(f"hf_sparse: backend {backend!r} returns no attention weights; using 'reference' for this call")
        return "reference"
    reason = chosen.unsupported(call)
    if reason is not None:
        raise ValueError(f"backend {backend!r} cannot run this call: {reason}; use backend='auto'")
    return backend


def run_attention(call: AttentionCall, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Run ``call`` on the chosen backend; returns ``(out, weights, backend actually used)``."""
    name = choose_backend(call, backend)
    out, weights = BACKENDS[name].run(call)
    return out, weights, name


def sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pattern: str | Pattern,
    *,
    attention_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    position_bias: torch.Tensor | None = None,
    need_weights: bool = False,
    backend: str = "auto",
    block_size: int | None = None,
    image_grid: tuple[int, int] | None = None,
    num_prefix: int | None = None,
    **pattern_options,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sparse attention on raw tensors.

    Args:
        query: ``[B, Hq, Lq, D]``; the queries are the last ``Lq`` positions of the ``Lk`` keys
            (``q_offset = Lk - Lq``, as with a KV cache).
        key, value: ``[B, Hkv, Lk, D]`` / ``[B, Hkv, Lk, Dv]``, ``Hq % Hkv == 0``.
        pattern: a :class:`~hf_sparse.patterns.Pattern` or a registered name (options as keywords).
        attention_mask: the model's mask, boolean (``True`` = attend) or additive float, broadcastable
            to ``[B, Hq, Lq, Lk]``.
        is_causal: enforce ``kv_idx <= q_idx``.
        scale: score scale, default ``D ** -0.5``.
        dropout_p: attention dropout probability (apply only in training).
        position_bias: additive float bias (T5), broadcastable to ``[B, Hq, Lq, Lk]``.
        need_weights: also return the attention probabilities ``[B, Hq, Lq, Lk]``.
        backend: ``"auto"`` or a name from :data:`BACKENDS`.

    Returns:
        ``(out [B, Hq, Lq, Dv], weights or None)``.
    """
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError(
            f"query/key/value must be 4-D [batch, heads, length, head_dim], got shapes "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    q_len, kv_len = query.shape[2], key.shape[2]
    if q_len > kv_len:
        raise ValueError(f"query length {q_len} exceeds key length {kv_len}; queries must be the last keys")
    ctx = MaskContext(
        q_len=q_len, kv_len=kv_len, q_offset=kv_len - q_len, causal=is_causal,
        image_grid=image_grid, num_prefix=num_prefix,
    )
    call = AttentionCall(
        query=query, key=key, value=value, pattern=as_pattern(pattern, **pattern_options), ctx=ctx,
        attention_mask=attention_mask, scale=scale, dropout_p=dropout_p, position_bias=position_bias,
        need_weights=need_weights, block_size=block_size,
    )
    out, weights, _ = run_attention(call, backend)
    return out, weights
