"""The rows ``hf-sparse bench-model`` measures: its models (BERT-base, GPT-2-small and ViT-base shapes, random
init, fp32, batch 1, dropout off), what a row's process needs in memory, and :class:`Row`, one row built, stepped
and measured in its own process (see the script's docstring for what each field means).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from hf_sparse.kernels import clear_caches
from hf_sparse.lab.models import random_model
from hf_sparse.patch import last_backends, patch_model
from hf_sparse.patterns import MaskContext, density, make_pattern
from hf_sparse.positions import extend_positions

from .profiling import PeakAllocated, PeakMemory, set_malloc_thresholds, time_runs


def build(model_name: str, tokens_or_size: int, quick: bool, seed: int):
    """``(model, inputs, labels-added inputs)`` for one row; text lengths are tokens, ViT sizes are pixels."""
    torch.manual_seed(seed)
    tiny = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=64, intermediate_size=128) if quick else {}
    gen = torch.Generator().manual_seed(seed)
    if model_name == "bert":
        model = random_model("bert", "classification", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **tiny)
        config = model.config
        extend_positions(model, max(tokens_or_size, config.max_position_embeddings))
        inputs = {"input_ids": torch.randint(1000, config.vocab_size, (1, tokens_or_size), generator=gen)}
        labels = torch.tensor([1])
    elif model_name == "gpt2":
        small = dict(n_layer=2, n_head=4, n_embd=64) if quick else {}
        model = random_model("gpt2", "lm", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **small)
        config = model.config
        extend_positions(model, max(tokens_or_size, config.n_positions))
        inputs = {"input_ids": torch.randint(0, config.vocab_size, (1, tokens_or_size), generator=gen)}
        labels = inputs["input_ids"]
    else:
        extra = dict(image_size=16, patch_size=4) if quick else {}
        model = random_model("vit", "classification", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                             **tiny, **extra)
        size = tokens_or_size
        inputs = {"pixel_values": torch.randn(1, 3, size, size, generator=gen), "interpolate_pos_encoding": True}
        labels = torch.tensor([1])
    return model, inputs, labels


def tokens_of(model_name: str, size: int, quick: bool) -> int:
    if model_name != "vit":
        return size
    patch = 4 if quick else 16
    return (size // patch) ** 2 + 1


def estimate_gb(model_name: str, tokens: int, mode: str, quick: bool) -> float:
    """Memory a row's process needs, estimated (compared with ``max_memory_gb``; rows of a case are interleaved
    only when their estimates fit it together), in GB.

    ~0.6 GB of libraries, the fp32 weights (and as much again for gradients in training), and activations:
    per layer and token training keeps ~12 fp32 values of width ``hidden`` plus 2 of width ``4·hidden``,
    inference holds about two layers' worth; an LM head adds ``tokens × vocab`` logits (3× in training).
    Attention itself is not counted (it depends on the kernel). How the estimate compares with measured peak-RSS
    growth: docs/benchmarks.md ("Other measurements").
    """
    hidden, layers, params = (64, 2, 1e6) if quick else (768, 12, 86e6 if model_name != "gpt2" else 124e6)
    train = mode == "train"
    per_layer = tokens * (12 * hidden + 2 * 4 * hidden) * 4
    total = 0.6e9 + params * 4 * (2 if train else 1) + per_layer * (layers if train else 2)
    if model_name == "gpt2":
        total += tokens * (64 if quick else 50257) * 4 * (3 if train else 1)
    return total / 1e9


class Row:
    """One row in its own process: built (and patched) here, then :meth:`step` per warm-up or timed step
    (``run_interleaved`` calls them in turn with the other rows of its model, mode and size; :func:`run_row` in
    a row alone), then :meth:`finish` for the memory and density fields. The resident-set peak covers every step."""

    def __init__(self, spec: dict[str, Any]) -> None:
        torch.set_num_threads(spec["threads"])
        if spec["malloc_mmap_threshold_mb"] is not None:  # in the row's process only, the same for dense and sparse
            set_malloc_thresholds(spec["malloc_mmap_threshold_mb"], spec["malloc_trim_threshold_mb"])
        self.spec = spec
        self.model, self.inputs, self.labels = build(spec["model"], spec["size"], spec["quick"], spec["seed"])
        if spec["batch"] > 1:
            self.inputs = {k: v.expand(spec["batch"], *v.shape[1:]) if torch.is_tensor(v) else v
                           for k, v in self.inputs.items()}
            self.labels = self.labels.expand(spec["batch"], *self.labels.shape[1:])
        self.pattern = None
        if spec["pattern"] != "dense":
            self.pattern = make_pattern(spec["pattern"], **spec["options"])
            patch_model(self.model, self.pattern, backend=spec["backend"])
        self.train = spec["mode"] == "train"
        self.model.train(self.train)
        self.load = os.getloadavg()[0]
        self.peak = PeakMemory().__enter__()

    def step(self) -> None:
        if self.train:
            self.model.zero_grad(set_to_none=True)
            self.model(**self.inputs, labels=self.labels).loss.backward()
        else:
            with torch.no_grad():
                self.model(**self.inputs)

    def finish(self) -> dict[str, Any]:
        self.peak.__exit__(None, None, None)
        self.model.zero_grad(set_to_none=True)
        pattern, spec = self.pattern, self.spec
        if pattern is not None:  # cold, as a first call: the plan and its masks are built and held inside the step
            clear_caches()
        with PeakAllocated() as alloc:
            self.step()
        used = sorted({b for b in last_backends(self.model).values() if b}) if pattern else ["sdpa"]
        tokens = tokens_of(spec["model"], spec["size"], spec["quick"])
        kept = 1.0
        if pattern is not None:  # after the timed runs, so the mask it builds is not in anyone's peak
            grid = {"image_grid": (math.isqrt(tokens - 1),) * 2, "num_prefix": 1} if spec["model"] == "vit" else {}
            ctx = MaskContext.for_length(tokens, causal=spec["model"] == "gpt2", **grid)
            full = (tokens + 1) / (2 * tokens) if ctx.causal else 1.0  # share of pairs dense attention uses
            kept = density(pattern, ctx) / full
            clear_caches()
        return {"load_avg_1m": round(self.load, 2), "peak_mem_mb": self.peak.growth_mb, "alloc_peak_mb": alloc.peak_mb,
                "memory_method": self.peak.method, "backends_used": used, "density": round(kept, 4),
                "pattern_desc": pattern.describe() if pattern else "sdpa"}


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """A row alone in its process (``run_isolated``): its warm-up and timed steps back to back."""
    row = Row(spec)
    return {"times_s": time_runs(row.step, spec["warmup"], spec["repeats"]), **row.finish()}
