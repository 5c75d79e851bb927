"""Where fine-tuned models come from: the offline MiniLM weights, hub ids and local folders (the MiniLM
folder and random-init models have their home in :mod:`hf_sparse.lab.models`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models import apply_config_overrides, minilm_path

__all__ = ["MINILM", "apply_config_overrides", "count_parameters", "minilm_path", "resolve_pretrained"]

#: ``model.name_or_path`` aliases resolved to offline folders.
MINILM = "minilm"


def resolve_pretrained(name_or_path: str) -> str:
    """``"minilm"`` -> the offline folder; an existing local folder -> itself; anything else -> a hub id."""
    if name_or_path == MINILM:
        return minilm_path()
    if Path(name_or_path).is_dir():
        return str(Path(name_or_path).resolve())
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:  # a path, not a hub id
        raise ValueError(f"model.name_or_path {name_or_path!r}: no such folder (a hub id is 'name' or 'org/name'); "
                         "check the path, or create it first (the config's comments say how)")
    return name_or_path


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
