"""The bridge to Transformers: one attention function and its mask function, registered under ``hf_sparse``.

Transformers 5.x attention modules call
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager)(module, q, k, v, mask, ...)``
with ``q [B, Hq, Lq, D]``, ``k/v [B, Hkv, Lk, D]`` and expect ``(out [B, Lq, Hq, D], weights or None)``.
The implementation name is config-wide, but the function receives the module, so the sparse settings live
on each targeted module (:data:`STATE_ATTR`): untargeted modules, cross-attention and modules of another
model in the same process take the plain SDPA path with their original semantics.

The mask function registered under the same name is Transformers' own ``sdpa_mask``: the model's padding
and causal masks reach the attention function exactly as they would reach SDPA (boolean, ``True`` =
attend, or ``None``). Without it Transformers would silently drop padding masks for an unknown name.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ._registry import check_name
from .config import SparseConfig
from .decoding import take_layer, windowed_attention
from .kernels import AttentionCall, reference_attention, run_attention
from .patterns import Dense, MaskContext

IMPLEMENTATION_NAME = "hf_sparse"
STATE_ATTR = "hf_sparse_state"
#: Key of the settings a patched model records in its config (and ``save_pretrained`` writes to config.json).
SAVED_KEY = "hf_sparse"

# Keyword arguments some attention modules pass that change the math in ways no sparse kernel models.
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks")


@dataclass
class ModuleSparseState:
    """Sparse settings of one attention module (stored on the module as ``module.hf_sparse_state``).

    Attributes:
        config: the :class:`SparseConfig` this module follows.
        module_name: the module's qualified name in its model.
        image_grid / num_prefix: patch grid and prefix-token count of an image model (for image patterns).
        last_backend: the kernel that served this module's most recent call (for benchmarks and logs).
        calls: number of sparse calls served.
        last_block_density: for a data-dependent pattern (``topk_blocks``, ``learned_gate``), the fraction of
            key blocks its most recent call kept (mean over batch and heads); ``None`` for fixed patterns.
        cache_layer: the window KV cache layer (:mod:`hf_sparse.decoding`) whose keys the next call receives.
    """

    config: SparseConfig
    module_name: str
    image_grid: tuple[int, int] | None = None
    num_prefix: int | None = None
    last_backend: str | None = None
    calls: int = field(default=0)
    last_block_density: float | None = None
    cache_layer: Any = field(default=None, repr=False, compare=False)


def get_state(module: torch.nn.Module) -> ModuleSparseState | None:
    """The module's sparse state, or ``None`` if it is not patched."""
    return getattr(module, STATE_ATTR, None)


def iter_states(model: torch.nn.Module) -> Iterable[tuple[str, ModuleSparseState]]:
    """``(name, state)`` of each patched module."""
    for name, module in model.named_modules():
        state = get_state(module)
        if state is not None:
            yield name, state


def attention_configs(model: torch.nn.Module) -> list[Any]:
    """Every distinct config object reachable from the model's modules and their sub-configs (those that have an
    attention implementation)."""
    found: dict[int, Any] = {}
    stack = [getattr(m, "config", None) for m in model.modules()]
    while stack:
        cfg = stack.pop()
        if cfg is None or id(cfg) in found or not hasattr(cfg, "_attn_implementation"):
            continue
        found[id(cfg)] = cfg
        stack.extend(getattr(cfg, key, None) for key in getattr(cfg, "sub_configs", {}) or {})
    return list(found.values())


#: ``[(config, implementation name or None)]``: what :func:`restore_implementation` puts back.
ImplementationSnapshot = list[tuple[Any, "str | None"]]


def implementation_snapshot(model: torch.nn.Module) -> ImplementationSnapshot:
    """The attention implementation each of the model's configs (:func:`attention_configs`) uses now."""
    return [(cfg, cfg._attn_implementation) for cfg in attention_configs(model)]


def restore_implementation(snapshot: ImplementationSnapshot) -> None:
    """Put each config of ``snapshot`` back to its recorded implementation, that config alone."""
    for cfg, name in snapshot:
        _set_own_implementation(cfg, name)


def _set_own_implementation(cfg: Any, name: str | None) -> None:
    # Transformers 5.x has no public way to set one config's implementation alone: the ``_attn_implementation``
    # setter and ``PreTrainedModel.set_attn_implementation`` both recurse into sub-configs (which a snapshot
    # restores one by one, possibly to different names), and the latter validates the name, so ``None`` or a
    # name registered only while capturing could not be put back. Hence the internal attribute, here only.
    cfg._attn_implementation_internal = name


@contextlib.contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Run the block with ``model`` switched to the attention implementation ``name`` (a name registered with
    ``AttentionInterface``); on exit, normal or not, every config gets back exactly the implementation it had on
    entry. Re-entrant: nested uses, on the same model or on others, each restore what they found."""
    snapshot = implementation_snapshot(model)
    for cfg, _ in snapshot:
        _TEMPORARY[id(cfg)] = _TEMPORARY.get(id(cfg), 0) + 1
    try:
        model.set_attn_implementation(name)
        yield
    finally:
        restore_implementation(snapshot)
        for cfg, _ in snapshot:
            _TEMPORARY[id(cfg)] -= 1
            if not _TEMPORARY[id(cfg)]:
                del _TEMPORARY[id(cfg)]


# ``id(config) -> depth`` of the configs an :func:`attention_implementation` block switched for its duration (a
# patched model keeps its states through such a switch; any other switch unpatches it, see hf_sparse.patch).
_TEMPORARY: dict[int, int] = {}


def switched_temporarily(cfg: Any) -> bool:
    """Whether ``cfg`` is switched for the duration of an :func:`attention_implementation` block."""
    return id(cfg) in _TEMPORARY


# Configs whose saved settings were already acted on (applied, or warned about): ``id -> weakref`` (configs are
# not hashable, and the id of a collected config may be reused, hence the weak reference).
_SETTLED: dict[int, weakref.ref] = {}

#: Set by :mod:`hf_sparse.patch`: ``(root model) -> None`` applies a loaded model's saved settings on its first call.
apply_on_first_call: Callable[[torch.nn.Module], None] | None = None


def settle(cfg: Any) -> None:
    """Mark ``cfg``'s saved settings as acted on: the attention function no longer looks at them."""
    key = id(cfg)
    _SETTLED[key] = weakref.ref(cfg, lambda _ref, key=key: _SETTLED.pop(key, None))


def _pending_settings(module: torch.nn.Module) -> Any:
    """The config of an unpatched ``module`` if it carries saved hf_sparse settings not yet acted on (a checkpoint
    of a patched model loaded with plain ``from_pretrained`` / ``from_config`` / ``pipeline``), else ``None``."""
    cfg = getattr(module, "config", None)
    if cfg is None or not getattr(cfg, SAVED_KEY, None):
        return None
    ref = _SETTLED.get(id(cfg))
    return None if ref is not None and ref() is cfg else cfg


def _calling_model(module: torch.nn.Module) -> torch.nn.Module | None:
    """The outermost Transformers model whose ``forward`` is running on this call stack and contains ``module``."""
    from transformers import PreTrainedModel

    found = None
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, PreTrainedModel) and owner is not found and any(m is module for m in owner.modules()):
            found = owner
        frame = frame.f_back
    return found


def _apply_pending(module: torch.nn.Module, cfg: Any) -> ModuleSparseState | None:
    """Apply the saved settings of the model ``module`` belongs to, once; the module's state afterwards."""
    root = None if torch.compiler.is_compiling() else _calling_model(module)
    settle(cfg)
    if apply_on_first_call is not None:
        apply_on_first_call(root, module)
    return get_state(module)


def resolve_causal(
    is_causal: bool | None,
    module: torch.nn.Module | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    q_len: int | None = None,
) -> bool:
    """Whether an attention call is causal: ``is_causal`` as the call passed it, else the module's own
    ``is_causal`` flag (``False`` without one). That is the causality patterns see (:class:`MaskContext`).

    With ``q_len`` (the call's query length): causality as SDPA applies it on top of the model's mask, which
    is only without an explicit ``attention_mask`` (the mask then carries causality itself) and with
    ``q_len > 1``.
    """
    causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", False))
    if q_len is None:
        return bool(causal)
    return bool(causal and attention_mask is None and q_len > 1)


def _dense_fallback(module, query, key, value, attention_mask, **kwargs) -> tuple[torch.Tensor, Any]:
    """What the module computed before patching (SDPA), or the dense reference when weights are wanted."""
    if kwargs.get("output_attentions", False):
        call = AttentionCall(
            query=query, key=key, value=value, pattern=Dense(),
            ctx=MaskContext(query.shape[2], key.shape[2], key.shape[2] - query.shape[2],
                            causal=resolve_causal(kwargs.get("is_causal"), module, attention_mask=attention_mask,
                                                  q_len=query.shape[2])),
            attention_mask=attention_mask, scale=kwargs.get("scaling"), dropout_p=kwargs.get("dropout", 0.0),
            position_bias=kwargs.get("position_bias"), need_weights=True,
        )
        out, weights = reference_attention(call)
        return out.transpose(1, 2).contiguous(), weights
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def sparse_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The function registered in ``AttentionInterface`` under ``"hf_sparse"``.

    Returns ``(out [B, Lq, Hq, Dv], weights [B, Hq, Lq, Lk] or None)``.
    """
    state = get_state(module)
    if state is None and (pending := _pending_settings(module)) is not None:
        state = _apply_pending(module, pending)
    if state is None:
        return _dense_fallback(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
            position_bias=position_bias, **kwargs,
        )
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ValueError(
                f"hf_sparse: module {state.module_name} ({type(module).__name__}) passes {name}={kwargs[name]!r}, "
                "which no sparse kernel supports; leave this module out of target_modules"
            )
    # The pattern's causality is the module's own; with an explicit model mask causality is also in the mask.
    causal = resolve_causal(is_causal, module)
    q_len, kv_len = query.shape[2], key.shape[2]
    ctx = MaskContext(
        q_len=q_len, kv_len=kv_len, q_offset=kv_len - q_len, causal=causal,
        image_grid=state.image_grid, num_prefix=state.num_prefix,
    )
    call = AttentionCall(
        query=query, key=key, value=value, pattern=state.config.pattern, ctx=ctx,
        attention_mask=attention_mask, scale=scaling, dropout_p=float(dropout), position_bias=position_bias,
        need_weights=bool(kwargs.get("output_attentions", False)), block_size=state.config.kernel_block_size,
    )
    layer = take_layer(state, key)
    if layer is not None and layer.evicted:
        out, weights, used = windowed_attention(layer, call)
    else:
        out, weights, used = run_attention(call, state.config.backend)
    if layer is not None:
        layer.evict(call.row_offsets)
    state.last_backend = used
    state.calls += 1
    if call.pattern.dynamic:
        state.last_block_density = call.dynamic_binding()[1].block_density
    return out.transpose(1, 2).contiguous(), weights


def register_attention(name: str, attention_fn: Any, mask_fn: Any, *, overwrite: bool = False) -> None:
    """Register ``attention_fn`` in Transformers' ``AttentionInterface`` and ``mask_fn`` in its
    ``AttentionMaskInterface`` under ``name`` (usable as ``attn_implementation``).

    Raises:
        ValueError: ``name`` is taken in either interface by another function (Transformers' own ``sdpa``
            included) and ``overwrite`` is false; registering the same functions again is a no-op.
    """
    check_name(AttentionInterface(), "attention function", name, attention_fn, overwrite=overwrite)
    check_name(AttentionMaskInterface(), "attention mask function", name, mask_fn, overwrite=overwrite)
    AttentionInterface.register(name, attention_fn)
    AttentionMaskInterface.register(name, mask_fn)


def register(*, overwrite: bool = False) -> None:
    """Register the attention function and the matching mask function under :data:`IMPLEMENTATION_NAME`
    (idempotent; see :func:`register_attention`)."""
    register_attention(IMPLEMENTATION_NAME, sparse_attention_forward, sdpa_mask, overwrite=overwrite)


register()
