"""The one pattern registry: names -> pattern classes, and construction from strings, options and dicts."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Intersection, Pattern, Union

PATTERNS: dict[str, type[Pattern]] = {}


def register_pattern(cls: type[Pattern]) -> type[Pattern]:
    """Class decorator: make ``cls`` available under ``cls.name`` to ``patch_model`` and configs."""
    if cls.name in PATTERNS and PATTERNS[cls.name] is not cls:
        raise ValueError(f"a pattern named {cls.name!r} is already registered ({PATTERNS[cls.name].__name__})")
    PATTERNS[cls.name] = cls
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
        )
    return cls(**options)


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
                f"{pattern.describe()}; put them in the pattern instead"
            )
        return pattern
    if isinstance(pattern, dict):
        if options:
            raise TypeError("options cannot be given together with a pattern dict")
        return pattern_from_dict(pattern)
    if isinstance(pattern, str):
        return make_pattern(pattern, **options)
    raise TypeError(f"pattern must be a name, a Pattern or a dict, got {type(pattern).__name__}: {pattern!r}")
