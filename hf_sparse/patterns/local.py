"""Token-local patterns: dense, sliding window, block-local and Longformer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import MaskContext, MaskMod, Pattern, check_int
from .registry import register_pattern


@register_pattern
@dataclass(frozen=True)
class Dense(Pattern):
    """Every pair allowed: the same code path as the sparse patterns, for A/B baselines."""

    name: ClassVar[str] = "dense"

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        def mask(b, h, q_idx, kv_idx):
            return torch.ones_like(q_idx - kv_idx, dtype=torch.bool)

        return mask


@register_pattern
@dataclass(frozen=True)
class SlidingWindow(Pattern):
    """Allowed iff ``|i - j| <= window`` (``window`` positions on each side)."""

    name: ClassVar[str] = "sliding_window"
    window: int = 64

    def _validate(self) -> None:
        check_int(self.name, "window", self.window, minimum=1)

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        w = self.window

        def mask(b, h, q_idx, kv_idx):
            return (q_idx - kv_idx).abs() <= w

        return mask


@register_pattern
@dataclass(frozen=True)
class Longformer(SlidingWindow):
    """Longformer: a sliding window of ``window`` positions on each side plus ``num_global`` global tokens
    (default 1, the ``[CLS]`` token)."""

    name: ClassVar[str] = "longformer"
    num_global: int = field(default=1, kw_only=True)


@register_pattern
@dataclass(frozen=True)
class BlockLocal(Pattern):
    """Allowed iff ``i // block_size == j // block_size`` (non-overlapping local blocks)."""

    name: ClassVar[str] = "block_local"
    block_size: int = 64

    def _validate(self) -> None:
        check_int(self.name, "block_size", self.block_size, minimum=1)

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        bs = self.block_size

        def mask(b, h, q_idx, kv_idx):
            return torch.div(q_idx, bs, rounding_mode="floor") == torch.div(kv_idx, bs, rounding_mode="floor")

        return mask
