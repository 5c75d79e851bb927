"""The fine-tuning run config: dataclasses that round-trip YAML/JSON, plus dotted command-line overrides.

Layout (see configs/*/*.yaml and docs/finetune_and_study.md)::

    run_name, task, seed, output_dir
    model: name_or_path, config (architecture overrides, e.g. {patch_size: 2})
    data:  source, max_train_samples, max_eval_samples, max_test_samples, max_length,
           (seq2seq) max_target_length, language_pair, source_column, target_column
    sparse: null (dense baseline), a SparseConfig mapping (pattern, options, backend, target_modules, layers), or
            (seq2seq) one per part: {encoder: <mapping or null>, decoder: <mapping or null>}
    generation: (seq2seq evaluation) num_beams, max_new_tokens
    train: epochs, max_steps, batch_size (per process), eval_batch_size, gradient_accumulation_steps,
           learning_rate, weight_decay, warmup_ratio, lr_scheduler, mixed_precision, checkpoint_every_steps,
           num_threads

Every problem (unknown key, wrong type, bad value) raises :class:`ConfigError` with a one-line message that
names the key, the value and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_sparse.cli.settings import (
    ConfigError,
    apply_overrides,
    build_dataclass,
    load_settings,
    read_yaml_mapping,
)
from hf_sparse.config import SparseConfig
from hf_sparse.kernels import backend_names

__all__ = ["ConfigError", "DataConfig", "GenerateConfig", "ModelConfig", "RunConfig", "TrainConfig", "apply_overrides",
           "build_dataclass", "read_yaml_mapping"]


@dataclass
class ModelConfig:
    """``name_or_path``: ``"minilm"`` (the offline MiniLM BERT weights), ``"vit"`` (a random-init ViT), a hub
    id or a local folder. ``config``: overrides applied to the model's Transformers config (architecture
    sizes of random-init models, e.g. ``{hidden_size: 64, patch_size: 2}``)."""

    name_or_path: str = "minilm"
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """``source``: ``"offline"``, a hub data set name or a local path (see :mod:`hf_sparse.lab.data`);
    ``max_*_samples`` take a seeded random slice; ``max_length`` truncates text (tokens).

    Seq2seq tasks only: ``max_target_length`` truncates the target (tokens, end token included);
    ``language_pair`` (``"en-de"``: source language - target language) picks the direction of translation
    data; ``source_column`` / ``target_column`` name the text columns of hub / local data."""

    source: str = "offline"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_test_samples: int | None = None
    max_length: int = 128
    max_target_length: int = 64
    language_pair: str | None = None
    source_column: str | None = None
    target_column: str | None = None


@dataclass
class GenerateConfig:
    """How seq2seq tasks generate during evaluation: greedy (``num_beams: 1``) or beam search, at most
    ``max_new_tokens`` tokens (``null``: ``data.max_target_length``)."""

    num_beams: int = 1
    max_new_tokens: int | None = None


@dataclass
class TrainConfig:
    """Optimization settings. ``batch_size`` is per process: one optimizer step sees
    ``batch_size * processes * gradient_accumulation_steps`` samples (the global batch)."""

    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5.0e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"
    mixed_precision: str = "no"
    checkpoint_every_steps: int | None = None
    num_threads: int | None = None


@dataclass
class RunConfig:
    """One fine-tuning run; results go to ``<output_dir>/<run_name>/``."""

    run_name: str = "run"
    task: str = "sentiment"
    seed: int = 0
    output_dir: str = "results"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sparse: dict[str, Any] | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        _check_values(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def sparse_config(self) -> SparseConfig | None:
        """The :class:`~hf_sparse.SparseConfig` of ``sparse`` (``None`` for the dense baseline); for a per-part
        config the encoder's, else the decoder's (see :meth:`sparse_parts`)."""
        parts = self.sparse_parts()
        return parts.get("all") or parts.get("encoder") or parts.get("decoder")

    def sparse_parts(self) -> dict[str, SparseConfig]:
        """``{"all": config}`` for one pattern on every self-attention, ``{"encoder": .., "decoder": ..}`` (parts
        set to null left out) for per-part settings, ``{}`` for the dense baseline."""
        if self.sparse is None:
            return {}
        if not isinstance(self.sparse, dict) or not set(self.sparse) & set(SPARSE_PARTS):
            return {"all": _sparse_config(self.sparse, "sparse")}
        extra = sorted(set(self.sparse) - set(SPARSE_PARTS))
        if extra:
            raise ConfigError(
                f"sparse: per-part settings take only the keys encoder / decoder, got also {', '.join(extra)}; "
                "put pattern / options under sparse.encoder or sparse.decoder"
            )
        return {part: _sparse_config(self.sparse[part], f"sparse.{part}")
                for part in SPARSE_PARTS if self.sparse.get(part) is not None}

    # -- round trips ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        return build_dataclass(cls, data, float_strings=True)

    @classmethod
    def from_yaml(cls, text: str) -> RunConfig:
        return cls.from_dict(yaml.safe_load(text) or {})

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> RunConfig:
        """Read the YAML file ``path`` and apply ``overrides`` (``["--train.epochs", "1", ...]``)."""
        return load_settings(cls, path, overrides)


#: Parts a seq2seq ``sparse`` section may name (``sparse: {encoder: {...}, decoder: {...}}``).
SPARSE_PARTS = ("encoder", "decoder")


def _sparse_config(data: Any, where: str) -> SparseConfig:
    try:
        config = SparseConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {' '.join(str(exc).split())}") from None
    if config.backend not in backend_names():
        raise ConfigError(f"{where}: unknown backend {config.backend!r}; choose one of: {', '.join(backend_names())}")
    return config


_POSITIVE = ("train.epochs", "train.batch_size", "train.eval_batch_size", "train.gradient_accumulation_steps",
             "data.max_length", "data.max_target_length", "generation.num_beams")
_POSITIVE_OR_NULL = ("train.max_steps", "train.checkpoint_every_steps", "train.num_threads",
                     "data.max_train_samples", "data.max_eval_samples", "data.max_test_samples",
                     "generation.max_new_tokens")
MIXED_PRECISION = ("no", "bf16", "fp16")


def _check_values(cfg: RunConfig) -> None:
    def get(key: str) -> Any:
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    for key in _POSITIVE:
        if get(key) <= 0:
            raise ConfigError(f"config key {key!r} must be > 0, got {get(key)!r}")
    for key in _POSITIVE_OR_NULL:
        if get(key) is not None and get(key) <= 0:
            raise ConfigError(f"config key {key!r} must be > 0 or null, got {get(key)!r}")
    train = cfg.train
    if train.learning_rate <= 0 or train.weight_decay < 0 or not 0 <= train.warmup_ratio < 1:
        raise ConfigError(
            f"train: need learning_rate > 0, weight_decay >= 0, 0 <= warmup_ratio < 1; got {train.learning_rate}, "
            f"{train.weight_decay}, {train.warmup_ratio}"
        )
    if train.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"train.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {train.mixed_precision!r}")
    from transformers.trainer_utils import SchedulerType

    schedulers = [s.value for s in SchedulerType]
    if train.lr_scheduler not in schedulers:
        raise ConfigError(f"train.lr_scheduler {train.lr_scheduler!r} is unknown; choose one of: {', '.join(schedulers)}")
    if not cfg.run_name or "/" in cfg.run_name:
        raise ConfigError(f"run_name must be a non-empty name without '/', got {cfg.run_name!r}")
    if cfg.data.language_pair is not None:
        from ..data.pairs import parse_language_pair

        try:
            parse_language_pair(cfg.data.language_pair)
        except ValueError as exc:
            raise ConfigError(f"data.language_pair: {exc}") from None
    cfg.sparse_parts()  # validates the patterns, their options and the backend names now, not after loading data
