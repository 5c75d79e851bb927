"""The training loop on ``accelerate``: data, model, optional ``patch_model``, AdamW with an LR schedule,
gradient accumulation, mixed precision, per-epoch validation, ``save_state`` checkpoints, ``--resume``, and
the metrics.json record.

Batch accounting: ``train.batch_size`` is per process. Each process reads every ``processes``-th batch of
one shared, seeded order, so an epoch has ``ceil(N / (batch_size * processes))`` micro-batches per process
and ``ceil(that / gradient_accumulation_steps)`` optimizer steps; one step sees up to
``batch_size * processes * gradient_accumulation_steps`` samples (the global batch).

Resuming loses nothing: a checkpoint (``<run_dir>/checkpoints/step_<N>``) holds the model, optimizer,
scheduler and RNG states (``accelerator.save_state``) plus ``trainer_state.json`` (epoch, position in the
epoch, validation history, counters, wall times). The sample order of an epoch depends only on
``(seed, epoch)``, and the DataLoaders own their generators, so a resumed run continues with the batches
and dropout draws the uninterrupted run would have used.

A finished run also saves the fine-tuned model with ``save_pretrained`` (a patched model's ``config.json``
keeps its sparse settings) and its tokenizer or image processor to ``<run_dir>/model`` (metrics.json's
``model_dir``): ``hf_sparse.load_patched(AutoModelFor..., <run_dir>/model)`` reloads it sparse.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.trainer_pt_utils import LengthGroupedSampler

from hf_sparse.patch import patched_modules

from . import record
from .config import ConfigError, RunConfig
from .models import count_parameters
from .tasks import Task, get_task

STATE_FILE = "trainer_state.json"
MODEL_DIR = "model"  # the fine-tuned model and its processor, relative to the run folder


class Interrupted(RuntimeError):
    """Raised by ``interrupt_after_steps`` to simulate a crash (no final checkpoint, no metrics.json)."""


@dataclass
class Progress:
    """Everything about a run's progress that a checkpoint must carry besides the accelerate state."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # micro-batches of ``epoch`` already consumed (this process)
    history: list[dict[str, Any]] = field(default_factory=list)
    train_samples: int = 0  # global counts from earlier sessions (this session's are added at the end)
    train_tokens: int = 0
    train_wall_s: float = 0.0
    total_wall_s: float = 0.0
    resumed_from: list[int] = field(default_factory=list)


def _optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norm weights (as in Transformers' examples)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.learning_rate)


def _loaders(task: Task, prepared: Any, collate: Any, cfg: RunConfig, sampler_gen: torch.Generator):
    lengths = task.lengths(prepared["train"])
    if len(set(lengths)) > 1:  # group similar lengths: far less padding for short texts
        sampler = LengthGroupedSampler(cfg.train.batch_size, lengths=lengths, generator=sampler_gen)
    else:
        sampler = RandomSampler(prepared["train"], generator=sampler_gen)

    def loader(split: str, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(prepared[split], batch_size=batch_size, collate_fn=collate,
                          generator=torch.Generator().manual_seed(cfg.seed), **kwargs)

    return (loader("train", cfg.train.batch_size, sampler=sampler),
            loader("validation", cfg.train.eval_batch_size), loader("test", cfg.train.eval_batch_size))


def _latest_checkpoint(run_dir: Path) -> Path | None:
    found = [p for p in (run_dir / "checkpoints").glob("step_*") if (p / STATE_FILE).exists()]
    return max(found, key=lambda p: int(p.name.split("_")[1])) if found else None


class Trainer:
    """One run of a :class:`RunConfig` (use :func:`run`)."""

    def __init__(self, cfg: RunConfig, *, resume: bool = False, interrupt_after_steps: int | None = None):
        self.cfg, self.resume, self.interrupt_after_steps = cfg, resume, interrupt_after_steps
        self.start = time.perf_counter()
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.task = get_task(cfg.task)
        self.sparse_parts = cfg.sparse_parts()
        self.task.check_sparse_parts(self.sparse_parts)
        if cfg.train.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("train.mixed_precision 'fp16' needs a GPU; use 'bf16' or 'no' on a CPU")
        # cpu=True without a GPU: under torchrun (`accelerate launch --multi_gpu`) the processes then form a
        # gloo (MULTI_CPU) group instead of each training alone.
        self.acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.train.mixed_precision,
                               gradient_accumulation_steps=cfg.train.gradient_accumulation_steps)
        self.progress = Progress()
        self.local_samples = self.local_tokens = 0
        self.session_train_s = 0.0

    # -- set-up -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, acc = self.cfg, self.acc
        set_seed(cfg.seed)
        with acc.main_process_first():  # the first process fetches / caches the data, the others read it
            self.data = self.task.load_data(cfg)
            set_seed(cfg.seed)
            self.model, self.processor = self.task.build_model(cfg, self.data)
            self.prepared = self.task.prepare(self.data, self.processor, cfg)
        if self.sparse_parts:
            self.task.apply_sparse(self.model, self.sparse_parts)
        elif patched_modules(self.model):  # a checkpoint saved patched (e.g. trained gates) keeps its settings
            self.sparse_parts = {"all": next(iter(patched_modules(self.model).values()))}
        self.sampler_gen = torch.Generator()
        train, val, test = _loaders(self.task, self.prepared, self.task.collate(self.processor, cfg), cfg,
                                    self.sampler_gen)
        optimizer = _optimizer(self.model, cfg)
        self.model, self.optimizer, self.train_loader, self.val_loader, self.test_loader = acc.prepare(
            self.model, optimizer, train, val, test)
        self.batches_per_epoch = len(self.train_loader)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.train.gradient_accumulation_steps)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        # Accelerate steps a prepared scheduler once per process per optimizer step (its convention).
        scheduler = get_scheduler(cfg.train.lr_scheduler, self.optimizer,
                                  num_warmup_steps=math.ceil(cfg.train.warmup_ratio * self.total_steps) * acc.num_processes,
                                  num_training_steps=self.total_steps * acc.num_processes)
        self.scheduler = acc.prepare(scheduler)
        if self.resume:
            self._load_checkpoint()

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _load_checkpoint(self) -> None:
        latest = _latest_checkpoint(self.cfg.run_dir)
        if latest is None:
            self.acc.print(f"--resume: no checkpoint in {self.cfg.run_dir / 'checkpoints'}; starting from step 0")
            return
        self.acc.load_state(str(latest))
        state = json.loads((latest / STATE_FILE).read_text())
        self.progress = Progress(**state)
        self.progress.resumed_from.append(self.progress.step)
        self.acc.print(f"resuming from {latest} (step {self.progress.step}, epoch {self.progress.epoch + 1}, "
                       f"batch {self.progress.batches_done} of {self.batches_per_epoch})")

    def _save_checkpoint(self) -> None:
        folder = self.cfg.run_dir / "checkpoints" / f"step_{self.progress.step}"
        self.acc.wait_for_everyone()
        self.acc.save_state(str(folder))
        state = Progress(**{**self.progress.__dict__})
        state.train_samples, state.train_tokens = self._global_counts()
        state.train_wall_s += self.session_train_s
        state.total_wall_s += time.perf_counter() - self.start
        if self.acc.is_main_process:
            (folder / STATE_FILE).write_text(json.dumps(state.__dict__, indent=1))
            for old in (self.cfg.run_dir / "checkpoints").glob("step_*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def _global_counts(self) -> tuple[int, int]:
        counts = torch.tensor([self.local_samples, self.local_tokens], device=self.acc.device, dtype=torch.long)
        total = self.acc.reduce(counts, reduction="sum")
        return self.progress.train_samples + int(total[0]), self.progress.train_tokens + int(total[1])

    # -- training -----------------------------------------------------------------------------------------
    def train(self) -> None:
        cfg, acc, p = self.cfg, self.acc, self.progress
        bar = tqdm(total=self.total_steps, initial=p.step, desc=f"train {cfg.run_name}",
                   disable=not acc.is_local_main_process)
        while p.step < self.total_steps and p.epoch < self.epochs:
            self.sampler_gen.manual_seed(cfg.seed * 1000 + p.epoch)  # order depends on (seed, epoch) only
            loader = self.train_loader
            if p.batches_done:
                loader = acc.skip_first_batches(self.train_loader, p.batches_done)
            self.model.train()
            tick = time.perf_counter()
            for batch in loader:
                with acc.accumulate(self.model):
                    loss = self.model(**self.task.model_inputs(batch)).loss
                    acc.backward(loss)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                self.local_samples += int(batch["labels"].shape[0])
                self.local_tokens += int(self.task.sample_tokens(batch).sum())
                p.batches_done += 1
                if not acc.sync_gradients:
                    continue
                p.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                end_of_epoch = p.batches_done >= self.batches_per_epoch
                every = cfg.train.checkpoint_every_steps
                if p.step >= self.total_steps or end_of_epoch:
                    break
                if every and p.step % every == 0:
                    self.session_train_s += time.perf_counter() - tick
                    self._save_checkpoint()
                    tick = time.perf_counter()
                if self.interrupt_after_steps is not None and p.step >= self.interrupt_after_steps:
                    raise Interrupted(f"interrupted after step {p.step} (--interrupt-after-steps)")
            self.session_train_s += time.perf_counter() - tick
            self._end_epoch()
            if self.interrupt_after_steps is not None and p.step >= self.interrupt_after_steps:
                raise Interrupted(f"interrupted after step {p.step} (--interrupt-after-steps)")
        bar.close()

    def _end_epoch(self) -> None:
        p = self.progress
        result = self.task.evaluate(self.model, self.val_loader, self.acc, desc=f"validation epoch {p.epoch + 1}")
        p.history.append({"epoch": p.epoch + 1, "step": p.step, **{k: round(v, 6) for k, v in result.metrics.items()}})
        self.acc.print(f"epoch {p.epoch + 1} step {p.step}: validation " +
                       ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
        p.epoch += 1
        p.batches_done = 0
        self._save_checkpoint()

    # -- final evaluation, model and record ------------------------------------------------------------------------
    def save_model(self) -> str:
        """Save the unwrapped model and its tokenizer / image processor to ``<run_dir>/model`` (main process);
        return that folder relative to the run folder."""
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            folder = self.cfg.run_dir / MODEL_DIR
            self.acc.unwrap_model(self.model).save_pretrained(folder, save_function=self.acc.save)
            self.processor.save_pretrained(folder)
        self.acc.wait_for_everyone()
        return MODEL_DIR

    def finish(self) -> dict[str, Any]:
        cfg, acc, p, task = self.cfg, self.acc, self.progress, self.task
        tick = time.perf_counter()
        test = task.evaluate(self.model, self.test_loader, acc, desc="test")
        eval_s = time.perf_counter() - tick
        samples, tokens = self._global_counts()
        train_s = p.train_wall_s + self.session_train_s
        memory, memory_kind = record.peak_memory_mb(acc.device)
        memory = float(acc.reduce(torch.tensor(memory, device=acc.device), reduction="max")) if acc.num_processes > 1 else memory
        lengths = task.lengths(self.prepared["test"])
        model = acc.unwrap_model(self.model)
        source = self.data["train"].info.dataset_name or cfg.data.source
        return {
            "run_name": cfg.run_name, "task": cfg.task, "status": "ok", "primary_metric": task.primary_metric,
            "test": {k: round(v, 6) for k, v in test.metrics.items()},
            "validation_history": p.history,
            "speed": {
                "train_samples_per_s": round(samples / train_s, 3) if train_s else None,
                "train_tokens_per_s": round(tokens / train_s, 1) if train_s else None,
                "eval_samples_per_s": round(test.samples / eval_s, 3),
                "eval_tokens_per_s": round(test.tokens / eval_s, 1),
                "generation_tokens_per_s": round(test.generated_tokens / (test.generation_s or eval_s), 1)
                if test.generated_tokens else None,
                "train_wall_s": round(train_s, 2), "eval_wall_s": round(eval_s, 2),
                "total_wall_s": round(p.total_wall_s + time.perf_counter() - self.start, 2),
                "peak_memory_mb": round(memory, 1), "peak_memory_kind": memory_kind,
            },
            "sparse": task.sparse_summary(model, self.sparse_parts, self.prepared["test"]),
            "model": {"name_or_path": cfg.model.name_or_path, "model_type": model.config.model_type,
                      "parameters": count_parameters(model)},
            "data": {"source": source, **{s: len(self.data[s]) for s in ("train", "validation", "test")},
                     "mean_tokens": round(sum(lengths) / len(lengths), 2),
                     "labels": list(getattr(self.data["train"].features.get("label"), "names", []) or []) or None,
                     **task.data_record()},
            "metric_library": test.metric_library,
            "steps": p.step, "seed": cfg.seed,
            "training": {"epochs_run": p.epoch, "steps_per_epoch": self.steps_per_epoch,
                         "batches_per_epoch_per_process": self.batches_per_epoch,
                         "global_batch_size": cfg.train.batch_size * acc.num_processes * cfg.train.gradient_accumulation_steps,
                         "train_samples_seen": samples, "train_tokens_seen": tokens, "resumed_from_steps": p.resumed_from},
            "versions": record.versions(),
            "hardware": record.hardware(acc.device, acc.num_processes, cfg.train.mixed_precision),
            "config": cfg.to_dict(),
        }


def run(cfg: RunConfig, *, resume: bool = False, interrupt_after_steps: int | None = None) -> dict[str, Any]:
    """Train and evaluate ``cfg``; write and return the metrics.json record (main process writes)."""
    trainer = Trainer(cfg, resume=resume, interrupt_after_steps=interrupt_after_steps)
    trainer.setup()
    trainer.train()
    metrics = trainer.finish()
    metrics["model_dir"] = trainer.save_model()
    if trainer.acc.is_main_process:
        record.write_json(cfg.run_dir / "metrics.json", metrics)
    trainer.acc.wait_for_everyone()
    trainer.acc.end_training()
    return metrics
