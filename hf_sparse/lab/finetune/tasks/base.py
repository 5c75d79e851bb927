"""What a fine-tuning task provides to the training loop, and the shared classification behaviour.

A task turns a :class:`~hf_sparse.lab.finetune.config.RunConfig` into data, a model and metrics; the loop in
:mod:`hf_sparse.lab.finetune.loop` does everything else (accelerate, optimizer, checkpoints, speed, metrics.json).
To add a task: subclass :class:`Task` in a new module of this package and add one line to
``hf_sparse.lab.finetune.tasks.TASKS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import datasets
import torch
from tqdm.auto import tqdm

from hf_sparse.config import SparseConfig
from hf_sparse.models import image_layout
from hf_sparse.patch import patch_model
from hf_sparse.patterns import MaskContext

from ..config import ConfigError, RunConfig
from ..record import sparse_summary
from ..scores import classification_scores

Batch = dict[str, torch.Tensor]


@dataclass
class EvalResult:
    """One evaluation pass over a split, counted over all processes (padding duplicates removed).

    Attributes:
        metrics: e.g. ``{"loss": .., "accuracy": .., "f1": ..}``.
        samples / tokens: examples and input tokens evaluated.
        generated_tokens: tokens produced by generation (seq2seq tasks), else ``None``.
        metric_library: ``"evaluate"`` or the library the metric wraps (``"scikit-learn"``, ...).
        generation_s: seconds spent generating (seq2seq tasks), else ``None``.
    """

    metrics: dict[str, float]
    samples: int
    tokens: int
    generated_tokens: int | None = None
    metric_library: str | None = None
    generation_s: float | None = None


class Task:
    """Base class of fine-tuning tasks. Subclasses set ``name`` / ``primary_metric`` and implement the
    methods that raise ``NotImplementedError``."""

    name: ClassVar[str] = "task"
    primary_metric: ClassVar[str] = "accuracy"

    def load_data(self, cfg: RunConfig) -> datasets.DatasetDict:
        """Raw ``train`` / ``validation`` / ``test`` splits for ``cfg.data`` (already sliced to ``max_*``)."""
        raise NotImplementedError

    def build_model(self, cfg: RunConfig, data: datasets.DatasetDict) -> tuple[torch.nn.Module, Any]:
        """``(model, processor)``: the model for ``cfg.model`` and its tokenizer / image processor."""
        raise NotImplementedError

    def prepare(self, data: datasets.DatasetDict, processor: Any, cfg: RunConfig) -> datasets.DatasetDict:
        """Model-ready splits (tokenized / transformed) whose rows :meth:`collate` turns into batches."""
        raise NotImplementedError

    def collate(self, processor: Any, cfg: RunConfig) -> Callable[[list[dict]], Batch]:
        """The DataLoader ``collate_fn``: rows of :meth:`prepare`'s splits -> a batch of model inputs."""
        raise NotImplementedError

    def lengths(self, split: datasets.Dataset) -> list[int]:
        """Input tokens of each example of a prepared split (batches group similar lengths when they vary)."""
        raise NotImplementedError

    def sample_tokens(self, batch: Batch) -> torch.Tensor:
        """``[B]`` number of real (non-padding) input tokens of each example of ``batch``."""
        raise NotImplementedError

    def mask_context(self, model: torch.nn.Module, length: int, causal: bool = False) -> MaskContext:
        """The self-attention context of a ``length``-token input, to measure a pattern's density."""
        layout = image_layout(model)
        grid, prefix = layout if layout is not None else (None, None)
        return MaskContext.for_length(length, causal=causal, image_grid=grid, num_prefix=prefix)

    def model_inputs(self, batch: Batch) -> Batch:
        """The part of a collated batch the model's ``forward`` takes (tasks may carry extra keys)."""
        return batch

    def check_sparse_parts(self, parts: dict[str, SparseConfig]) -> None:
        """:class:`ConfigError` if this task cannot apply ``parts`` (see ``RunConfig.sparse_parts``)."""
        if set(parts) - {"all"}:
            raise ConfigError(
                f"sparse: per-part settings ({', '.join(sorted(parts))}) are for seq2seq tasks; task {self.name!r} "
                "takes one pattern (sparse.pattern, sparse.options)"
            )

    def apply_sparse(self, model: torch.nn.Module, parts: dict[str, SparseConfig]) -> None:
        """Patch ``model`` with ``parts`` (non-empty): one pattern for every self-attention module."""
        patch_model(model, parts["all"])

    def data_record(self) -> dict[str, Any]:
        """Task-specific facts for the ``data`` block of metrics.json (e.g. target lengths of seq2seq data)."""
        return {}

    def sparse_summary(
        self, model: torch.nn.Module, parts: dict[str, SparseConfig], split: datasets.Dataset
    ) -> dict[str, Any]:
        """The ``sparse`` block of metrics.json for the prepared test ``split``."""
        return sparse_summary(model, parts.get("all"), self, self.lengths(split))

    def evaluate(self, model: torch.nn.Module, loader: Any, accelerator: Any, desc: str) -> EvalResult:
        """Evaluate ``model`` on ``loader`` (prepared by ``accelerator``) and return metrics over all processes."""
        raise NotImplementedError


class ClassificationTask(Task):
    """Sequence / image classification: cross-entropy loss, accuracy and F1 of the arg-max class."""

    def evaluate(self, model: torch.nn.Module, loader: Any, accelerator: Any, desc: str) -> EvalResult:
        model.eval()
        preds, refs, losses, tokens = [], [], [], []
        with torch.no_grad():
            for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
                logits = model(**batch).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="none")
                gathered = accelerator.gather_for_metrics(
                    (logits.argmax(-1), batch["labels"], loss, self.sample_tokens(batch))
                )
                for store, value in zip((preds, refs, losses, tokens), gathered, strict=True):
                    store.append(value.cpu())
        pred, ref, loss, tok = (torch.cat(x) for x in (preds, refs, losses, tokens))
        num_labels = getattr(accelerator.unwrap_model(model).config, "num_labels", int(ref.max()) + 1)
        scores, library = classification_scores(pred.tolist(), ref.tolist(), num_labels)
        metrics = {"loss": float(loss.mean()), **scores}
        return EvalResult(metrics, samples=len(ref), tokens=int(tok.sum()), metric_library=library)
