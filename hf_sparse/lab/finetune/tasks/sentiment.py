"""Sentiment classification with a BERT-style encoder (default: the offline MiniLM): short reviews, or long
documents (``data.source: offline:rt_roundup``) with the position table extended to ``data.max_length``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
)

from ...data import build_sentiment
from ..config import RunConfig
from ..models import apply_config_overrides, resolve_pretrained
from .base import Batch, ClassificationTask
from .helpers import fit_positions, from_pretrained, load_limited


class SentimentTask(ClassificationTask):
    """Columns ``text`` / ``label`` (other columns are dropped); inputs truncated to ``data.max_length`` tokens,
    padded per batch. A ``data.max_length`` beyond the model's learned position table (MiniLM: 512) extends it
    with :func:`hf_sparse.extend_positions` (pretrained rows tiled) before training."""

    name = "sentiment"

    def load_data(self, cfg: RunConfig) -> datasets.DatasetDict:
        return load_limited(build_sentiment, cfg)

    def build_model(self, cfg: RunConfig, data: datasets.DatasetDict) -> tuple[torch.nn.Module, Any]:
        path = resolve_pretrained(cfg.model.name_or_path)
        names = data["train"].features["label"].names
        config = from_pretrained(AutoConfig, path, num_labels=len(names), id2label=dict(enumerate(names)),
                                 label2id={n: i for i, n in enumerate(names)})
        apply_config_overrides(config, cfg.model.config)
        model = from_pretrained(AutoModelForSequenceClassification, path, config=config)
        tokenizer = from_pretrained(AutoTokenizer, path)
        fit_positions(model, cfg.data.max_length, tokenizer)
        return model, tokenizer

    def prepare(self, data: datasets.DatasetDict, processor: Any, cfg: RunConfig) -> datasets.DatasetDict:
        def tokenize(rows: dict[str, list]) -> dict[str, list]:
            return processor(rows["text"], truncation=True, max_length=cfg.data.max_length)

        extra = [c for c in data["train"].column_names if c != "label"]  # e.g. rt_roundup's fresh_share
        tokenized = data.map(tokenize, batched=True, remove_columns=extra, desc="tokenizing")
        return tokenized.rename_column("label", "labels")

    def collate(self, processor: Any, cfg: RunConfig) -> Callable[[list[dict]], Batch]:
        return DataCollatorWithPadding(processor, return_tensors="pt")

    def lengths(self, split: datasets.Dataset) -> list[int]:
        return [len(ids) for ids in split["input_ids"]]

    def sample_tokens(self, batch: Batch) -> torch.Tensor:
        return batch["attention_mask"].sum(-1)
