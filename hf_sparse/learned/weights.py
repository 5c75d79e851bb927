"""Reloading the parameters that patterns add to attention modules (e.g. ``learned_gate``'s gates).

``save_pretrained`` writes them with the model (they are in ``state_dict()``), but ``from_pretrained`` builds
the model before the patch is re-applied, so it drops them as unexpected keys. :func:`restore_added_weights`
reads exactly those keys back from the checkpoint's safetensors files after the patch re-created the modules.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open

_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"
_HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token", "local_files_only", "force_download", "proxies")


def _checkpoint_file(path: str, name: str, kwargs: dict[str, Any]) -> str | None:
    local = os.path.join(path, kwargs.get("subfolder") or "", name)
    if os.path.isdir(path):
        return local if os.path.isfile(local) else None
    from transformers.utils import cached_file

    hub = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS}
    return cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub)


def _checkpoint_keys(path: str, kwargs: dict[str, Any]) -> dict[str, str]:
    """``{tensor name: safetensors file}`` of a ``save_pretrained`` folder (single file or sharded)."""
    single = _checkpoint_file(path, _SINGLE, kwargs)
    if single is not None:
        with safe_open(single, framework="pt") as handle:
            return dict.fromkeys(handle.keys(), single)
    index = _checkpoint_file(path, _INDEX, kwargs)
    if index is None:
        raise ValueError(f"{path!r} has no {_SINGLE} or {_INDEX}; save the patched model with save_pretrained")
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    folder = os.path.dirname(index)
    files = {shard: _checkpoint_file(path, shard, kwargs) if not os.path.isdir(path) else os.path.join(folder, shard)
             for shard in set(weight_map.values())}
    return {key: files[shard] for key, shard in weight_map.items()}


def _saved_name(key: str, available: dict[str, str], prefix: str) -> str | None:
    """The checkpoint's name for model key ``key`` (a head model and its base model differ by ``prefix.``)."""
    candidates = [key]
    if prefix:
        candidates += [f"{prefix}.{key}", key[len(prefix) + 1:] if key.startswith(prefix + ".") else None]
    return next((c for c in candidates if c is not None and c in available), None)


def restore_added_weights(model: torch.nn.Module, path: str, keys: set[str], **from_pretrained_kwargs: Any) -> None:
    """Load the state-dict entries ``keys`` of ``model`` from the checkpoint at ``path``.

    Raises:
        ValueError: the checkpoint lacks some of them (it was saved before the pattern added them).
    """
    if not keys:
        return
    available = _checkpoint_keys(path, from_pretrained_kwargs)
    prefix = getattr(model, "base_model_prefix", "") or ""
    found = {key: _saved_name(key, available, prefix) for key in sorted(keys)}
    missing = [key for key, name in found.items() if name is None]
    if missing:
        raise ValueError(
            f"the checkpoint {path!r} has no saved values for {len(missing)} parameter(s) the sparse pattern adds, "
            f"e.g. {missing[0]!r}; save the model with save_pretrained after patching (and training) it"
        )
    state: dict[str, torch.Tensor] = {}
    for key, name in found.items():
        with safe_open(available[name], framework="pt") as handle:
            state[key] = handle.get_tensor(name)
    own = model.state_dict()
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(f"saved {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"could not place saved parameter(s) {result.unexpected_keys[:3]} in the model")
