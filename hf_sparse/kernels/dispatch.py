"""The one kernel dispatcher: a registry of backends, the ``auto`` choice, and ``sparse_attention``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._logging import log_once
from .._registry import register_entry
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


def register_backend(backend: Backend, *, overwrite: bool = False) -> Backend:
    """Add ``backend`` to :data:`BACKENDS` under ``backend.name``.

    Raises:
        ValueError: the name is ``"auto"``, or is registered to another backend and ``overwrite`` is false
            (registering an equal backend again is a no-op).
    """
    if backend.name == "auto":
        raise ValueError("'auto' is the automatic backend choice, not a name a backend can take; choose another name")
    return register_entry(BACKENDS, "backend", backend.name, backend, overwrite=overwrite)


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
    device = call.query.device.type
    needs = ", ".join(f"{backend} from {keys} keys" for (backend, dev), keys in MIN_KEYS.items() if dev == device)
    return "masked_sdpa", (f"no sparse kernel pays here ({device}: {needs or 'none measured'}, at most "
                           f"{MAX_TILE_FRACTION:.0%} of tiles; this call has {call.ctx.kv_len} keys)")


#: A sparse kernel is chosen by ``auto`` only when at most this fraction of the attention tiles is computed
#: (the benchmark rows behind the value: docs/benchmarks.md, "Where the auto thresholds come from").
MAX_TILE_FRACTION = 0.6

#: The fewest keys at which a sparse kernel beats the exact fallback (dense SDPA with the pattern as a mask),
#: per (backend, device type); devices not listed fall back to masked SDPA. The values come from
#: ``hf-sparse bench-kernels`` rows, listed in docs/benchmarks.md ("Where the auto thresholds come from").
MIN_KEYS: dict[tuple[str, str], int] = {("blocksparse", "cpu"): 512, ("flex", "cuda"): 8192,
                                        ("blocksparse", "cuda"): 16384}
BLOCKSPARSE_MIN_LENGTH = MIN_KEYS["blocksparse", "cpu"]


def _pays(backend: str, call: AttentionCall) -> str | None:
    """Why ``backend`` beats the masked fallback for ``call`` on its device (see :data:`MIN_KEYS`), else ``None``."""
    min_keys = MIN_KEYS.get((backend, call.query.device.type))
    if min_keys is None or call.ctx.kv_len < min_keys:
        return None
    fraction = plan_for(call).computed_fraction
    if fraction <= MAX_TILE_FRACTION:
        return f"{call.ctx.kv_len} keys on {call.query.device.type}, {fraction:.0%} of the key blocks computed"
    return None


def _flex_rule(call: AttentionCall) -> tuple[str, str] | None:
    """FlexAttention (Triton) is the fast path where it applies and pays (CUDA)."""
    if flex_unsupported(call) is not None:
        return None
    saving = _pays("flex", call)
    return ("flex", saving) if saving else None


def _blocksparse_rule(call: AttentionCall) -> tuple[str, str] | None:
    saving = _pays("blocksparse", call)
    return ("blocksparse", saving) if saving else None


#: Ordered rules consulted by ``auto``; each returns ``(backend, reason)`` or ``None`` to pass.
AUTO_RULES: list[Callable[[AttentionCall], tuple[str, str] | None]] = [_flex_rule, _blocksparse_rule]


def choose_backend(call: AttentionCall, backend: str = "auto") -> str:
    """Resolve ``backend`` for ``call``: validate an explicit choice, or apply the ``auto`` rules.

    Raises:
        ValueError: unknown backend name, or an explicit backend that cannot compute this call exactly.
    """
    if torch.compiler.is_compiling():
        return _compiling_choice(call, backend)
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


#: Inside ``torch.compile`` these backends give way to an exact kernel that traces with ``fullgraph=True``: their
#: plans, ``BlockMask`` caches and left-padding split decide from tensor values (data-dependent branches).
COMPILE_REPLACEMENTS: dict[str, str] = {"blocksparse": "masked_sdpa", "flex": "masked_sdpa"}


def _compiling_choice(call: AttentionCall, backend: str) -> str:
    """The backend while ``torch.compile`` traces: decided from static settings only, and never logged (a log call
    breaks a full graph). ``auto`` and the backends of :data:`COMPILE_REPLACEMENTS` run ``masked_sdpa`` (exact for
    every pattern); ``reference`` when weights are requested. The module state records what ran."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(backend_names())}")
    if call.need_weights and (backend == "auto" or not BACKENDS[backend].returns_weights):
        return "reference"
    if backend == "auto":
        return "masked_sdpa"
    return COMPILE_REPLACEMENTS.get(backend, backend)


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
    kernel_block_size: int | None = None,
    image_grid: tuple[int, int] | None = None,
    image_prefix: int | None = None,
    **pattern_options: Any,
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
        kernel_block_size: tile size of block-sparse kernels (``None``: the pattern's ``block_size`` if it
            has one, else chosen by the kernel).
        image_grid / image_prefix: patch grid and count of prefix tokens before it, for image patterns
            (``local_2d``) whose own ``grid`` / ``num_prefix`` options are ``None``.
        **pattern_options: options of a pattern given by name (e.g. ``window=64``, ``block_size=32``). The
            keywords above are never pattern options (see
            :data:`~hf_sparse.patterns.registry.RESERVED_OPTION_NAMES`); ``TypeError`` names an option the
            pattern does not take, or options given with a pattern object.

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
        image_grid=image_grid, num_prefix=image_prefix,
    )
    call = AttentionCall(
        query=query, key=key, value=value, pattern=as_pattern(pattern, **pattern_options), ctx=ctx,
        attention_mask=attention_mask, scale=scale, dropout_p=dropout_p, position_bias=position_bias,
        need_weights=need_weights, block_size=kernel_block_size,
    )
    out, weights, _ = run_attention(call, backend)
    return out, weights
