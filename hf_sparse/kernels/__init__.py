"""Attention kernels behind one dispatcher. Every kernel takes an :class:`AttentionCall` and returns
``(out [B, Hq, Lq, Dv], weights or None)``; see :mod:`hf_sparse.kernels.call` for layouts and masks."""

from .caches import clear_caches
from .call import AttentionCall
from .dispatch import (
    AUTO_RULES,
    BACKENDS,
    Backend,
    backend_names,
    choose_backend,
    register_backend,
    run_attention,
    sparse_attention,
)
from .masked_sdpa import masked_sdpa_attention
from .reference import reference_attention

__all__ = [
    "AUTO_RULES", "BACKENDS", "AttentionCall", "Backend", "backend_names", "choose_backend", "clear_caches",
    "masked_sdpa_attention", "reference_attention", "register_backend", "run_attention", "sparse_attention",
]
