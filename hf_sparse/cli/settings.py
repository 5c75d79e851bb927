"""Script settings as a dataclass: defaults in code, a YAML file on top, ``key=value`` overrides on top of that.

    hf-sparse analyze --config configs/analysis/minilm_rt.yaml seq_len=256 densities=[0.25,0.5]

Values of overrides are parsed as YAML (``3``, ``0.5``, ``[1, 2]``, ``null``, ``{a: 1}``); unknown keys raise a
one-line ``ValueError`` listing the valid ones. The resolved settings are written next to the results.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _apply(cfg: T, values: dict[str, Any], origin: str) -> T:
    valid = [f.name for f in dataclasses.fields(cfg)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} in {origin}; valid settings: {', '.join(valid)}")
    return dataclasses.replace(cfg, **values)


def parse_config(cls: type[T], argv: list[str] | None = None, description: str | None = None) -> T:
    """Build ``cls`` from ``--config FILE`` and ``key=value`` arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with settings (keys as in the dataclass)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings overriding the file")
    args = parser.parse_args(argv)
    cfg = cls()
    if args.config:
        with open(args.config) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config} must hold a mapping of settings, got {type(loaded).__name__}")
        cfg = _apply(cfg, loaded, args.config)
    pairs = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value (e.g. seq_len=256)")
        pairs[key.strip()] = yaml.safe_load(value)
    return _apply(cfg, pairs, "the command line")


def config_dict(cfg: Any) -> dict[str, Any]:
    """The settings as a plain dict (what goes into the results' JSON)."""
    return dataclasses.asdict(cfg)
