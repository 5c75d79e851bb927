"""FlexAttention backend: the pattern's mask function becomes a ``BlockMask`` (cached per pattern, shape and
device); the model's padding mask and additive biases (T5) join as a ``mask_mod`` / ``score_mod``.

Limits, reported through :func:`flex_unsupported` so that ``auto`` never picks it where it would fail:
no attention dropout, no backward on CPU (PyTorch has none), no attention weights. On CUDA the kernel is
compiled (Triton); on CPU it is compiled only for large calls (compilation takes tens of seconds) and
otherwise runs eagerly (exact, but it materializes the scores). ``HF_SPARSE_FLEX_COMPILE=0|1`` forces it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch

from ..patterns import MaskContext, MaskMod, Pattern, bound_mask_mod
from .call import AttentionCall, additive_bias

#: Calls with at least this many (query, key) pairs are compiled on CPU when compilation is "auto".
CPU_COMPILE_MIN_PAIRS = 1 << 22
FLEX_BLOCK = 128
#: Compiled flex specializes on shapes and mask functions; a model sees many (lengths x layers x patterns), so
#: the compile calls here allow more recompilations than dynamo's default of 8 before it falls back to eager.
RECOMPILE_LIMIT = 64


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def flex_unsupported(call: AttentionCall) -> str | None:
    """Why FlexAttention cannot compute ``call`` exactly here, or ``None``."""
    if not flex_available():
        return f"torch {torch.__version__} has no FlexAttention"
    if call.dropout_p > 0:
        return "FlexAttention has no attention dropout"
    if call.query.device.type == "cpu" and call.needs_grad:
        return "FlexAttention has no backward on CPU"
    if call.query.device.type not in ("cpu", "cuda"):
        return f"FlexAttention does not run on {call.query.device.type}"
    if call.query.shape[2] == 0:
        return "empty query"
    return None


def _should_compile(call: AttentionCall) -> bool:
    setting = os.environ.get("HF_SPARSE_FLEX_COMPILE", "auto")
    if setting in ("0", "1"):
        return setting == "1"
    return call.query.device.type == "cuda" or call.ctx.q_len * call.ctx.kv_len >= CPU_COMPILE_MIN_PAIRS


@functools.lru_cache(maxsize=2)
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def _recompile_budget(compiled: bool):
    """Scoped (not global) raise of dynamo's recompile limit for the compiled flex call."""
    if not compiled:
        return contextlib.nullcontext()
    import torch._dynamo

    limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch._dynamo.config.patch(recompile_limit=limit)


def _relative(mod: MaskMod, q_offset: int) -> MaskMod:
    """Flex passes query indices relative to the call; patterns take absolute positions."""
    if q_offset == 0:
        return mod
    return lambda b, h, q_idx, kv_idx: mod(b, h, q_idx + q_offset, kv_idx)


def _from_first_real(mod: MaskMod, q_offset: int, offsets: torch.Tensor) -> MaskMod:
    """Row ``b``'s positions counted from its first real token ``offsets[b]`` (see :mod:`hf_sparse.kernels.call`):
    pairs before it are not allowed."""
    def shifted(b, h, q_idx, kv_idx):
        off = offsets[b]
        q, kv = q_idx + (q_offset - off), kv_idx - off
        return mod(b, h, q.clamp(min=0), kv.clamp(min=0)) & (q >= 0) & (kv >= 0)

    return shifted


@functools.lru_cache(maxsize=32)
def _static_block_mask(pattern: Pattern, ctx: MaskContext, device: str, compiled: bool):
    from torch.nn.attention.flex_attention import create_block_mask

    mod = _relative(bound_mask_mod(pattern, ctx), ctx.q_offset)
    return create_block_mask(mod, None, None, ctx.q_len, ctx.kv_len, device=device, BLOCK_SIZE=FLEX_BLOCK,
                             _compile=compiled)


def clear_block_mask_cache() -> None:
    """Drop the cached ``BlockMask`` of fixed patterns (part of :func:`hf_sparse.kernels.clear_caches`)."""
    _static_block_mask.cache_clear()


def flex_attention_backend(call: AttentionCall) -> tuple[torch.Tensor, None]:
    """Sparse attention through ``torch.nn.attention.flex_attention``; returns ``(out [B, Hq, Lq, Dv], None)``."""
    reason = flex_unsupported(call)
    if reason is not None:
        raise ValueError(f"backend 'flex' cannot run this call: {reason}")
    compiled = _should_compile(call)
    with _recompile_budget(compiled):
        return _flex_call(call, compiled)


def _flex_call(call: AttentionCall, compiled: bool) -> tuple[torch.Tensor, None]:
    from torch.nn.attention.flex_attention import and_masks, create_block_mask

    ctx, device = call.ctx, call.query.device
    batch, heads = call.query.shape[:2]
    mask = call.attention_mask if call.has_bool_model_mask else None
    offsets = call.row_offsets()
    if mask is not None or call.pattern.dynamic or offsets is not None:
        pattern_mod = call.dynamic_binding()[0] if call.pattern.dynamic else bound_mask_mod(call.pattern, ctx)
        mods = [_relative(pattern_mod, ctx.q_offset) if offsets is None
                else _from_first_real(pattern_mod, ctx.q_offset, offsets.to(device))]
        if mask is not None:
            m = mask.expand(batch, mask.shape[1], ctx.q_len, ctx.kv_len)
            mods.append(lambda b, h, q_idx, kv_idx: m[b, h % m.shape[1], q_idx, kv_idx])
        block_mask = create_block_mask(and_masks(*mods), batch, heads, ctx.q_len, ctx.kv_len, device=device,
                                       BLOCK_SIZE=FLEX_BLOCK, _compile=compiled)
    else:
        block_mask = _static_block_mask(call.pattern, ctx, str(device), compiled)
    bias = additive_bias(call)
    score_mod = None
    if bias is not None:
        full = bias.expand(batch, heads, ctx.q_len, ctx.kv_len) if bias.shape[1] != 1 else \
            bias.expand(batch, 1, ctx.q_len, ctx.kv_len)

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + full[b, h % full.shape[1], q_idx, kv_idx].to(score.dtype)

    gqa = call.key.shape[1] != heads
    query, key, value = call.query, call.key, call.value
    if not torch.is_grad_enabled():  # CPU flex refuses inputs that require grad even under no_grad
        query, key, value = query.detach(), key.detach(), value.detach()
    with warnings.catch_warnings():  # eager (uncompiled) flex is deliberate for small CPU calls
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = _flex_fn(compiled)(
            query, key, value, score_mod=score_mod, block_mask=block_mask,
            scale=call.scale_value, enable_gqa=gqa,
        )
    return out, None
