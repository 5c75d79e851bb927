"""The one pattern registry: names -> pattern classes, and construction from strings, options and dicts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, overload

from .._registry import register_entry
from .base import Intersection, Pattern, Union

PATTERNS: dict[str, type[Pattern]] = {}

P = TypeVar("P", bound=type[Pattern])

#: Keywords that configure a call rather than a pattern: ``patch_model``'s own keywords, the
#: :class:`~hf_sparse.SparseConfig` fields and serialized keys, and ``sparse_attention``'s call keywords.
#: No pattern may take an option of one of these names, so pattern options and settings never share a name.
RESERVED_OPTION_NAMES = frozenset({
    "model", "pattern", "options", "name", "version",
    "target_modules", "filter_fn", "layers", "backend", "kernel_block_size", "max_positions",
    "query", "key", "value", "attention_mask", "is_causal", "scale", "dropout_p", "position_bias",
    "need_weights", "image_grid", "image_prefix",
})


@overload
def register_pattern(cls: P, *, overwrite: bool = False) -> P: ...


@overload
def register_pattern(cls: None = None, *, overwrite: bool = False) -> Callable[[P], P]: ...


def register_pattern(cls: P | None = None, *, overwrite: bool = False) -> P | Callable[[P], P]:
    """Class decorator: make the pattern dataclass ``cls`` available under ``cls.name`` to ``patch_model``
    and configs (``@register_pattern`` or ``@register_pattern(overwrite=True)``).

    Raises:
        ValueError: ``cls.name`` is registered to another class and ``overwrite`` is false (re-registering
            the same class is a no-op), or one of its options has a name in :data:`RESERVED_OPTION_NAMES`.
        TypeError: ``cls`` is not a dataclass subclass of :class:`Pattern`.
    """
    if cls is None:
        return lambda c: register_pattern(c, overwrite=overwrite)
    if not (isinstance(cls, type) and issubclass(cls, Pattern) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"register_pattern takes a dataclass subclass of Pattern, got {cls!r}")
    reserved = sorted(f.name for f in dataclasses.fields(cls) if f.name in RESERVED_OPTION_NAMES)
    if reserved:
        raise ValueError(
            f"pattern {cls.name!r} ({cls.__qualname__}) has option(s) {', '.join(reserved)}, reserved for "
            "patch_model / SparseConfig / sparse_attention settings; rename the option(s)"
        )
    register_entry(PATTERNS, "pattern", cls.name, cls, overwrite=overwrite)
    return cls


register_pattern(Union)
register_pattern(Intersection)


def pattern_names() -> list[str]:
    """Registered pattern names, sorted."""
    return sorted(PATTERNS)


def option_names(name: str) -> list[str]:
    """The keyword options the pattern ``name`` accepts."""
    return [f.name for f in dataclasses.fields(_lookup(name))]


def _lookup(name: str) -> type[Pattern]:
    if not isinstance(name, str) or name not in PATTERNS:
        raise ValueError(f"unknown sparse pattern {name!r}; known patterns: {', '.join(pattern_names())}")
    return PATTERNS[name]


def make_pattern(name: str, **options: Any) -> Pattern:
    """Build a registered pattern from its name and keyword options.

    Raises:
        ValueError: unknown name (the message lists the known ones) or an invalid option value.
        TypeError: an option the pattern does not take (the message lists the ones it does).
    """
    cls = _lookup(name)
    allowed = option_names(name)
    unexpected = sorted(set(options) - set(allowed))
    if unexpected:
        raise TypeError(
            f"pattern {name!r} got unexpected option(s) {', '.join(unexpected)}; it takes: {', '.join(allowed)}"
            + _tile_hint(unexpected)
        )
    return cls(**options)


def _tile_hint(keys: list[str]) -> str:
    return " (the kernel tile size is kernel_block_size=)" if "block_size" in keys else ""


def pattern_from_dict(data: dict[str, Any]) -> Pattern:
    """Inverse of :meth:`Pattern.to_dict` (compositions included)."""
    if not isinstance(data, dict) or "name" not in data:
        raise ValueError(f"a pattern description must be a dict with a 'name' key, got {data!r}")
    options = {k: v for k, v in data.items() if k != "name"}
    if "parts" in options:
        options["parts"] = tuple(pattern_from_dict(p) for p in options["parts"])
    for key, value in list(options.items()):
        if isinstance(value, list):
            options[key] = tuple(value)
    return make_pattern(data["name"], **options)


def as_pattern(pattern: str | Pattern | dict[str, Any], **options: Any) -> Pattern:
    """Accept a pattern object, a name plus options, or a dict; always return a pattern object."""
    if isinstance(pattern, Pattern):
        if options:
            raise TypeError(
                f"options {', '.join(sorted(options))} were given together with a pattern object "
                f"{pattern.describe()}; put them in the pattern instead" + _tile_hint(sorted(options))
            )
        return pattern
    if isinstance(pattern, dict):
        if options:
            raise TypeError(
                f"options {', '.join(sorted(options))} were given together with a pattern dict; put them in the dict"
            )
        return pattern_from_dict(pattern)
    if isinstance(pattern, str):
        return make_pattern(pattern, **options)
    raise TypeError(f"pattern must be a name, a Pattern or a dict, got {type(pattern).__name__}: {pattern!r}")
