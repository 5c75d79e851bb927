"""The one conflict policy of every hf_sparse registry (patterns, kernel backends, attention functions).

A name maps to one object. Registering a name that already maps to a *different* object raises
``ValueError`` unless ``overwrite=True``; registering the same object again is a no-op (so registration
on import is idempotent).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import TypeVar

T = TypeVar("T")


def check_name(registry: Mapping[str, object], kind: str, name: str, value: object, *, overwrite: bool = False) -> None:
    """Raise ``ValueError`` if ``name`` is not a non-empty string, or if ``registry`` already maps it to an
    object other than ``value`` and ``overwrite`` is false. ``kind`` names the registry in the message."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {kind} name must be a non-empty string, got {name!r}")
    if name in registry and not overwrite:
        existing = registry[name]
        if existing is not value and existing != value:
            raise ValueError(
                f"a {kind} named {name!r} is already registered ({_label(existing)}); pass overwrite=True to "
                "replace it, or choose another name"
            )


def register_entry(registry: MutableMapping[str, T], kind: str, name: str, value: T, *, overwrite: bool = False) -> T:
    """``registry[name] = value`` under the policy of :func:`check_name`; returns ``value``."""
    check_name(registry, kind, name, value, overwrite=overwrite)
    registry[name] = value
    return value


def _label(value: object) -> str:
    return getattr(value, "__qualname__", None) or type(value).__name__
