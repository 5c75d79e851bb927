"""Strided ("every k-th element") and dilated patterns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import MaskContext, MaskMod, Pattern, check_int
from .registry import register_pattern


@register_pattern
@dataclass(frozen=True)
class Strided(Pattern):
    """Sparse-Transformer strided pattern: allowed iff ``|i - j| <= window`` or ``(i - j) mod stride == 0``."""

    name: ClassVar[str] = "strided"
    stride: int = 64
    window: int = 32

    def _validate(self) -> None:
        check_int(self.name, "stride", self.stride, minimum=1)
        check_int(self.name, "window", self.window, minimum=0)

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        stride, w = self.stride, self.window

        def mask(b, h, q_idx, kv_idx):
            diff = q_idx - kv_idx
            return (diff.abs() <= w) | (diff % stride == 0)

        return mask


@register_pattern
@dataclass(frozen=True)
class Dilated(Pattern):
    """Dilated window: allowed iff ``|i - j| <= window * dilation`` and ``(i - j) mod dilation == 0``."""

    name: ClassVar[str] = "dilated"
    window: int = 32
    dilation: int = 2

    def _validate(self) -> None:
        check_int(self.name, "window", self.window, minimum=1)
        check_int(self.name, "dilation", self.dilation, minimum=1)

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        w, d = self.window, self.dilation

        def mask(b, h, q_idx, kv_idx):
            diff = q_idx - kv_idx
            return (diff.abs() <= w * d) & (diff % d == 0)

        return mask
