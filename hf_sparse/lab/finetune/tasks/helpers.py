"""Small helpers the tasks share: loading sliced data and pretrained parts with one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import torch

from hf_sparse.patch import SAVED_KEY, load_patched
from hf_sparse.positions import extend_positions

from ...data import limit_splits
from ..config import RunConfig


def load_limited(builder: Callable[..., datasets.DatasetDict], cfg: RunConfig) -> datasets.DatasetDict:
    """``builder(cfg.data.source, seed=cfg.seed)`` sliced to ``cfg.data.max_*_samples`` (seeded)."""
    data = builder(cfg.data.source, seed=cfg.seed)
    limits = {"train": cfg.data.max_train_samples, "validation": cfg.data.max_eval_samples,
              "test": cfg.data.max_test_samples}
    return limit_splits(data, limits, seed=cfg.seed)


def from_pretrained(loader: Any, path: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(path, ...)`` with a one-line error when the weights cannot be had.

    A checkpoint saved from a patched model (its config carries ``hf_sparse`` settings, e.g. the gates that
    ``hf-sparse train-gate`` trained) is loaded with :func:`hf_sparse.load_patched`: same sparse settings,
    added parameters restored."""
    try:
        if getattr(kwargs.get("config"), SAVED_KEY, None):
            return load_patched(loader, path, **kwargs)
        return loader.from_pretrained(path, **kwargs)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model.name_or_path {path!r} cannot be loaded ({first}); offline, use 'minilm'") from None


def fit_positions(model: torch.nn.Module, length: int, tokenizer: Any = None) -> None:
    """Let ``model`` read inputs of ``length`` tokens: a learned position table shorter than that (MiniLM: 512;
    an encoder-decoder's encoder, whose config is ``model.config.encoder``) is extended in place with
    :func:`hf_sparse.extend_positions` (pretrained rows tiled; both halves of a BERT2BERT), and the tokenizer's
    ``model_max_length`` follows. Models without such a table are left alone."""
    config = getattr(model.config, "encoder", model.config)
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and length > positions:
        extend_positions(model, length, tokenizer=tokenizer)
