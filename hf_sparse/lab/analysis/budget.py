"""Pattern options for a target density, so patterns can be compared at equal budget.

Density here is the fraction of the pairs a dense model attends (all pairs, or the causal ones) that a
pattern keeps at sequence length ``length`` without padding. Data-dependent routing keeps a fixed number of
blocks per row, so its density does not depend on the data and is measured on zero inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from hf_sparse.kernels.call import AttentionCall, dynamic_allowed
from hf_sparse.learned import TopKBlocks
from hf_sparse.patterns import Dense, MaskContext, Pattern, allowed_matrix, make_pattern

FAMILIES = ("sliding_window", "bigbird", "topk_blocks", "learned_gate")


def pattern_density(pattern: Pattern, length: int, causal: bool = False) -> float:
    """Fraction of the dense model's attended pairs ``pattern`` keeps at ``length`` (no padding)."""
    ctx = MaskContext.for_length(length, causal=causal)
    dense = float(allowed_matrix(Dense(), ctx).float().sum())
    if pattern.dynamic:
        options = {k: v for k, v in pattern.options().items() if k in ("block_size", "k", "num_local_blocks", "num_global")}
        zeros = torch.zeros(1, 1, length, 1)
        call = AttentionCall(zeros, zeros, zeros, TopKBlocks(**options), ctx)
        kept = dynamic_allowed(call)
    else:
        kept = allowed_matrix(pattern, ctx)
    return float(kept.float().sum()) / dense


def _closest(candidates: Iterable[Pattern], target: float, length: int, causal: bool) -> Pattern:
    best, best_gap = None, float("inf")
    for pattern in candidates:
        gap = abs(pattern_density(pattern, length, causal) - target)
        if gap < best_gap - 1e-9:
            best, best_gap = pattern, gap
    return best


def pattern_at_density(family: str, target: float, length: int, *, block_size: int = 64, causal: bool = False,
                       num_local_blocks: int = 1, num_global: int = 1, **extra: Any) -> Pattern:
    """The ``family`` pattern whose density at ``length`` is closest to ``target``.

    ``sliding_window`` varies ``window`` (with ``num_global`` global tokens); ``bigbird`` varies
    ``num_random_blocks`` and ``num_window_blocks`` (1 or 3) with one global block; ``topk_blocks`` and
    ``learned_gate`` vary ``k`` (``extra`` options, e.g. ``max_distance``, are passed on).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target density must be in (0, 1], got {target!r}")
    n = -(-length // block_size)
    if family == "sliding_window":
        candidates = (make_pattern(family, window=w, num_global=num_global) for w in range(1, length))
    elif family == "bigbird":
        candidates = (make_pattern(family, block_size=block_size, num_window_blocks=w, num_global_blocks=1,
                                   num_random_blocks=r) for w in (3, 1) for r in range(n))
    elif family in ("topk_blocks", "learned_gate"):
        candidates = (make_pattern(family, block_size=block_size, k=k, num_local_blocks=num_local_blocks,
                                   num_global=num_global, **extra) for k in range(n + 1))
    else:
        raise ValueError(f"no density rule for pattern family {family!r}; choose from {', '.join(FAMILIES)}")
    return _closest(candidates, target, length, causal)
