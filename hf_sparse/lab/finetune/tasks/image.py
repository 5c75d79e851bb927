"""Image classification with a ViT: ``model.name_or_path: vit`` is a random-init ``ViTConfig`` sized by
``model.config`` (image size and channels come from the data), anything else a hub / local checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import torch
import transformers
from transformers import AutoImageProcessor, AutoModelForImageClassification

from ...data import build_image
from ...models import random_config, random_model
from ..config import RunConfig
from ..models import apply_config_overrides, resolve_pretrained
from .base import Batch, ClassificationTask
from .helpers import from_pretrained, load_limited

RANDOM_VIT = "vit"
#: Default random-init ViT (overridden by ``model.config``): small enough to train on a CPU.
VIT_DEFAULTS = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
                "patch_size": 4}
_PIL_PROCESSOR = getattr(transformers, "ViTImageProcessorPil", transformers.ViTImageProcessor)


class ImageTask(ClassificationTask):
    """Columns ``image`` / ``label``; images converted to the model's channels, resized and normalized by
    the image processor in the collate function."""

    name = "image"

    def __init__(self) -> None:
        self.tokens_per_image = 0
        self.mode = "RGB"

    def load_data(self, cfg: RunConfig) -> datasets.DatasetDict:
        return load_limited(build_image, cfg)

    def build_model(self, cfg: RunConfig, data: datasets.DatasetDict) -> tuple[torch.nn.Module, Any]:
        names = data["train"].features["label"].names
        labels = {"num_labels": len(names), "id2label": dict(enumerate(names)),
                  "label2id": {n: i for i, n in enumerate(names)}}
        if cfg.model.name_or_path == RANDOM_VIT:
            first = data["train"][0]["image"]
            channels = 1 if first.mode in ("L", "1", "I", "F") else 3
            config = random_config("vit", cfg.model.config, image_size=first.size[0], num_channels=channels,
                                   **VIT_DEFAULTS, **labels)
            model = random_model("vit", "classification", config)
            processor = _PIL_PROCESSOR(
                size={"height": config.image_size, "width": config.image_size},
                image_mean=[0.5] * config.num_channels, image_std=[0.5] * config.num_channels,
            )
        else:
            path = resolve_pretrained(cfg.model.name_or_path)
            config = from_pretrained(transformers.AutoConfig, path, **labels)
            apply_config_overrides(config, cfg.model.config)
            model = from_pretrained(AutoModelForImageClassification, path, config=config, ignore_mismatched_sizes=True)
            processor = from_pretrained(AutoImageProcessor, path)
        size = model.config.image_size
        patch = model.config.patch_size
        self.tokens_per_image = (size // patch) * (size // patch) + 1
        self.mode = "L" if model.config.num_channels == 1 else "RGB"
        return model, processor

    def prepare(self, data: datasets.DatasetDict, processor: Any, cfg: RunConfig) -> datasets.DatasetDict:
        return data.rename_column("label", "labels")

    def collate(self, processor: Any, cfg: RunConfig) -> Callable[[list[dict]], Batch]:
        mode = self.mode

        def collate(rows: list[dict]) -> Batch:
            images = [row["image"].convert(mode) for row in rows]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            return {"pixel_values": pixels, "labels": torch.tensor([row["labels"] for row in rows])}

        return collate

    def lengths(self, split: datasets.Dataset) -> list[int]:
        return [self.tokens_per_image] * len(split)

    def sample_tokens(self, batch: Batch) -> torch.Tensor:
        return torch.full((batch["labels"].shape[0],), self.tokens_per_image, device=batch["labels"].device)
