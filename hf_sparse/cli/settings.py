"""The one settings loader of every ``hf-sparse`` command: a dataclass of settings (defaults in code), a YAML
file on top (``--config FILE.yaml``), dotted command-line overrides on top of that.

    hf-sparse <command> --config FILE.yaml --key value --nested.key value --other_key=value

Override values are parsed as YAML (``3``, ``0.5``, ``"[4096, 8192]"``, ``null``, ``"{window: 8}"``); a dotted key
reaches into nested settings (``--train.epochs 1``, ``--sparse.options.window 8``, ``--model_config.n_layer 2``);
``--sparse null`` replaces a whole section. Settings are type-checked against the dataclass's annotations; an
unknown key, a wrong type or a bad value raises :class:`ConfigError` with a one-line message naming the key,
the value and the fix (close matches / the valid keys). Settings round-trip through YAML/JSON
(:func:`config_dict`, :func:`to_yaml`, :func:`load_settings`).

A settings class may define ``from_dict(data)`` (its own validation; default :func:`build_dataclass`),
``normalize(data)`` (applied to the file's mapping before the overrides) and ``FILE_KIND`` (the file's name in
messages). Switches that are not settings (``finetune --resume``, ``study --only``) are argparse flags added to
:func:`command_parser`'s parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """Settings are invalid; the message is one line naming the key and the fix."""


# -- the command line --------------------------------------------------------------------------------------


def command_parser(description: str | None = None, *, config_required: bool = False) -> argparse.ArgumentParser:
    """An argument parser with ``--config``; add a command's switches to it, then call :func:`parse_command`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", required=config_required, metavar="FILE.yaml",
                        help="YAML file of settings (keys as in the settings dataclass)")
    return parser


def parse_command(cls: type[T], argv: list[str] | None, parser: argparse.ArgumentParser | None = None,
                  description: str | None = None) -> tuple[T, argparse.Namespace]:
    """``(settings, switches)`` from ``argv``: the parser's switches, ``--config FILE`` and ``--key value``
    overrides of ``cls``'s settings. ``switches.overridden`` lists the top-level keys the overrides set."""
    parser = parser or command_parser(description)
    keys = ", ".join(f.name for f in dataclasses.fields(cls))
    parser.epilog = f"settings (--key value, --a.b value; values are YAML): {keys}"
    args, overrides = parser.parse_known_args(argv)
    args.overridden = [flag[2:].partition("=")[0].split(".")[0] for flag in overrides if flag.startswith("--")]
    return load_settings(cls, args.config, overrides), args


def load_settings(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """``cls`` from the YAML file ``path`` (none: the defaults) with ``["--a.b", "value", ...]`` overrides."""
    data = read_yaml_mapping(path, getattr(cls, "FILE_KIND", "config file")) if path else {}
    normalize = getattr(cls, "normalize", None)
    data = apply_overrides(normalize(data) if normalize else data, overrides or [])
    from_dict = getattr(cls, "from_dict", None)
    return from_dict(data) if from_dict else build_dataclass(cls, data, float_strings=True)


def config_dict(cfg: Any) -> dict[str, Any]:
    """The settings as a plain dict (what goes into the results' JSON)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """The settings as YAML, in field order (loads back with :func:`load_settings` / ``from_dict``)."""
    return yaml.safe_dump(config_dict(cfg), sort_keys=False)


# -- files and overrides -------------------------------------------------------------------------------------


def read_yaml_mapping(path: str | Path, what: str = "config file", context: str = "") -> dict[str, Any]:
    """The mapping in the YAML file ``path``; a one-line :class:`ConfigError` when the file is missing, is not
    valid YAML or holds something else (``what`` names the file and ``context`` is appended to that error)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist{context}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--a.b.c value`` / ``--a.b.c=value`` pairs to the nested mapping ``data`` (a new copy).

    Values are parsed as YAML (``1`` is an int, ``null`` is None, ``[1, 2]`` a list, ``{window: 8}`` a
    mapping). ``--sparse null`` makes a run dense; ``--sparse.pattern ...`` on a dense config starts a
    sparse mapping.
    """
    data = yaml.safe_load(yaml.safe_dump(data, sort_keys=False))  # deep copy (keeping the key order)
    items = list(overrides)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--") or len(flag) == 2:
            raise ConfigError(f"expected an override like --train.epochs 1, got {flag!r}")
        key, eq, text = flag[2:].partition("=")
        if not eq:
            if not items:
                raise ConfigError(f"override --{key} has no value; write --{key} VALUE")
            text = items.pop(0)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override --{key}: {'.'.join(parts[: i + 1])} is {child!r}, not a mapping")
            node = child
        node[parts[-1]] = value
    return data


# -- building and type checking -----------------------------------------------------------------------------


def build_dataclass(cls: type, data: Any, prefix: str = "", *, kind: str = "config", float_strings: bool = False) -> Any:
    """``cls`` from the mapping ``data``, type-checked against its annotations; every problem is a one-line
    :class:`ConfigError` naming the dotted key (``prefix`` + name) and the fix. Nested dataclasses (also
    optional ones and ``dict[str, Dataclass]`` values) are built recursively; ints are accepted for floats.

    Args:
        kind: the word in messages (``"unknown study key ..."``).
        float_strings: also accept YAML 1.1's unquoted exponent floats (``1e-4`` reads as a string) for floats.
    """
    where = prefix.rstrip(".") or ("config" if kind == "config" else f"{kind} config")
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}: {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {kind} key {prefix + str(key)!r}{hint}; valid keys here: {', '.join(names)}")
    values = {name: _coerce(value, hints[name], f"{prefix}{name}", kind, float_strings) for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as exc:  # the class's own checks (__post_init__), as one line
        raise ConfigError(" ".join(str(exc).split())) from None


def _coerce(value: Any, hint: Any, key: str, kind: str, float_strings: bool) -> Any:
    """``value`` if it matches the type ``hint`` (dataclasses are built), else :class:`ConfigError`."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if dataclasses.is_dataclass(option):
            return build_dataclass(option, value, f"{key}.", kind=kind, float_strings=float_strings)
        origin = typing.get_origin(option) or option
        if origin is Any:
            return value
        if origin is dict and isinstance(value, dict):
            args = typing.get_args(option)
            if args and dataclasses.is_dataclass(args[1]):
                return {str(k): build_dataclass(args[1], v, f"{key}.{k}.", kind=kind, float_strings=float_strings)
                        for k, v in value.items()}
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is float and float_strings and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool, list) and isinstance(value, origin):
            return value
    wanted = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{kind} key {key!r} must be {wanted}, got {type(value).__name__}: {value!r}")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint) or hint
    return {dict: "a mapping", list: "a list"}.get(origin, getattr(origin, "__name__", str(origin)))
