"""The pattern abstraction: one mask function that drives every kernel and every picture.

Mask semantics, used everywhere in hf_sparse:

* A *mask function* ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor`` takes integer tensors that broadcast
  against each other and returns ``True`` where query position ``q_idx`` may attend key position ``kv_idx``.
  Positions are **absolute**: during a cached decode step the single query has ``q_idx = kv_len - 1``.
  This is the same signature as FlexAttention's ``mask_mod`` and Transformers' mask functions.
* A pattern is a frozen dataclass whose fields are its options. ``pattern.mask_mod(ctx)`` binds it to one
  call's shape (:class:`MaskContext`) and returns the mask function; causality is part of the context
  (it comes from the model, never from the pattern), so a bound causal pattern never allows ``kv > q``.
* Every pattern takes ``num_global``: the first ``num_global`` positions attend everything and are attended
  by everything (e.g. ``[CLS]``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BlockLayout:
    """Which ``block_size × block_size`` tiles of the attention matrix a pattern touches.

    Tiles are indexed ``[q_block, kv_block]`` with ``q_block = i // block_size`` over the call's query rows
    (row 0 is absolute position ``q_offset``) and ``kv_block = j // block_size``. The last row/column of
    tiles may be partial when a length is not a multiple of ``block_size``.

    Fixed patterns give ``[n_q_blocks, n_kv_blocks]`` tensors (the same for every batch element and head);
    data-dependent patterns give ``[B, H, n_q_blocks, n_kv_blocks]``.

    Attributes:
        active: bool, the tile has at least one allowed pair (a kernel must compute it).
        full: bool, every in-range pair of the tile is allowed (a kernel needs no token-level mask there).
    """

    block_size: int
    q_len: int
    kv_len: int
    active: torch.Tensor
    full: torch.Tensor

    @property
    def block_density(self) -> float:
        """Fraction of tiles that are active."""
        return float(self.active.float().mean()) if self.active.numel() else 0.0

    @property
    def max_blocks_per_row(self) -> int:
        return int(self.active.sum(-1).max()) if self.active.numel() else 0


@dataclass(frozen=True)
class MaskContext:
    """The shape of one attention call, which a pattern needs to produce its mask.

    Attributes:
        q_len: number of query positions in the call.
        kv_len: number of key/value positions (cache included).
        q_offset: absolute position of the first query; ``kv_len - q_len`` for a standard KV cache.
        causal: whether the model's attention is causal (then ``kv_idx <= q_idx`` is always enforced).
        image_grid: ``(rows, cols)`` of the patch grid of an image model, used by image patterns.
        num_prefix: number of non-patch tokens ([CLS], distillation) that precede the grid.
    """

    q_len: int
    kv_len: int
    q_offset: int = 0
    causal: bool = False
    image_grid: tuple[int, int] | None = None
    num_prefix: int | None = None

    @classmethod
    def for_length(cls, length: int, *, causal: bool = False, **kwargs: Any) -> MaskContext:
        """A self-attention context over ``length`` positions with no cache."""
        return cls(q_len=length, kv_len=length, q_offset=0, causal=causal, **kwargs)


def check_int(owner: str, name: str, value: Any, *, minimum: int) -> None:
    """Validate a pattern option: ``TypeError`` unless ``value`` is an int (not a bool), ``ValueError`` below
    ``minimum``; both messages name ``owner``, the option and the value."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class Pattern:
    """Base class of every sparse-attention pattern.

    Subclasses are frozen dataclasses registered with :func:`hf_sparse.patterns.register_pattern`; they
    implement :meth:`_mask_mod` (the pattern without global tokens or causality) and validate their options
    in :meth:`_validate` with ``ValueError``/``TypeError`` messages that name the value.
    """

    name: ClassVar[str] = "pattern"
    #: Patterns whose mask depends on the data (learned routing) set this; fixed patterns do not.
    dynamic: ClassVar[bool] = False

    num_global: int = field(default=0, kw_only=True)

    def __post_init__(self) -> None:
        check_int(self.name, "num_global", self.num_global, minimum=0)
        self._validate()

    # -- to be provided by subclasses -------------------------------------------------------------
    def _validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the bad option; called on construction."""

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------------
    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        """The full mask function for ``ctx``: the pattern, OR global tokens, AND causality."""
        inner = self._mask_mod(ctx)
        g = self.num_global
        if g > 0:
            base = inner

            def inner(b, h, q_idx, kv_idx):  # noqa: F811 - deliberate wrapping
                return base(b, h, q_idx, kv_idx) | (q_idx < g) | (kv_idx < g)

        if ctx.causal:
            pattern = inner

            def inner(b, h, q_idx, kv_idx):  # noqa: F811
                return pattern(b, h, q_idx, kv_idx) & (kv_idx <= q_idx)

        return inner

    @property
    def needs_image_grid(self) -> bool:
        """True for patterns defined on a 2-D patch grid (they need an image model or an explicit grid)."""
        return False

    def bind_dynamic(
        self, query: torch.Tensor, key: torch.Tensor, ctx: MaskContext, block_size: int
    ) -> tuple[MaskMod, BlockLayout]:
        """Data-dependent patterns (``dynamic = True``) choose what to keep from the call's tensors.

        Args:
            query: ``[B, Hq, Lq, D]``; key: ``[B, Hkv, Lk, D]`` (the call's tensors, cache included).
            ctx: the call's shape (causality included: never keep ``kv > q`` when ``ctx.causal``).
            block_size: tile size of the selection.

        Returns:
            ``(mask_mod, layout)``: a mask function that uses its ``b`` and ``h`` arguments (batch element,
            query head) and a :class:`BlockLayout` with ``[B, Hq, n_q_blocks, n_kv_blocks]`` tensors whose
            active tiles cover every pair ``mask_mod`` allows.
        """
        raise NotImplementedError(f"{self.name} is a fixed pattern; use mask_mod(ctx)")

    def attach(self, module: torch.nn.Module) -> None:
        """Called when ``module`` is patched with this pattern; learned patterns add their parameters here."""

    def detach(self, module: torch.nn.Module) -> None:
        """Called when ``module`` is unpatched; must remove whatever :meth:`attach` added."""

    def options(self) -> dict[str, Any]:
        """The pattern's options as a plain dict (what ``patch_model(**options)`` would take)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description, inverted by :func:`hf_sparse.patterns.pattern_from_dict`."""
        out: dict[str, Any] = {"name": self.name}
        for key, value in self.options().items():
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def describe(self) -> str:
        """Short human-readable form, e.g. ``sliding_window(window=64, num_global=1)``."""
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items() if not (k == "num_global" and v == 0))
        return f"{self.name}({opts})"

    def __or__(self, other: Pattern) -> Pattern:
        return Union((self, other))

    def __and__(self, other: Pattern) -> Pattern:
        return Intersection((self, other))


@dataclass(frozen=True)
class _Composite(Pattern):
    parts: tuple[Pattern, ...] = ()

    def _validate(self) -> None:
        if not isinstance(self.parts, tuple):
            object.__setattr__(self, "parts", tuple(self.parts))
        if len(self.parts) < 2:
            raise ValueError(f"{self.name}: needs at least two patterns, got {len(self.parts)}")
        for part in self.parts:
            if not isinstance(part, Pattern):
                raise TypeError(f"{self.name}: parts must be patterns, got {part!r}")
            if part.dynamic:
                raise ValueError(f"{self.name}: the data-dependent pattern {part.name!r} cannot be combined")

    @property
    def needs_image_grid(self) -> bool:
        return any(p.needs_image_grid for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "parts": [p.to_dict() for p in self.parts], "num_global": self.num_global}

    def describe(self) -> str:
        joiner = " | " if isinstance(self, Union) else " & "
        inner = joiner.join(p.describe() for p in self.parts)
        return f"({inner})" if self.num_global == 0 else f"({inner}, num_global={self.num_global})"


@dataclass(frozen=True)
class Union(_Composite):
    """Allowed where any part allows (``a | b``)."""

    name: ClassVar[str] = "union"

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        mods = [p.mask_mod(ctx) for p in self.parts]

        def mask(b, h, q_idx, kv_idx):
            out = mods[0](b, h, q_idx, kv_idx)
            for mod in mods[1:]:
                out = out | mod(b, h, q_idx, kv_idx)
            return out

        return mask


@dataclass(frozen=True)
class Intersection(_Composite):
    """Allowed where every part allows (``a & b``)."""

    name: ClassVar[str] = "intersection"

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        mods = [p.mask_mod(ctx) for p in self.parts]

        def mask(b, h, q_idx, kv_idx):
            out = mods[0](b, h, q_idx, kv_idx)
            for mod in mods[1:]:
                out = out & mod(b, h, q_idx, kv_idx)
            return out

        return mask
