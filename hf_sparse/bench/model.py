"""Whole-model speed and memory on long inputs: dense SDPA vs sparse patterns through ``patch_model``.

    hf-sparse bench-model                                    # everything below (hours on 2 CPU cores)
    hf-sparse bench-model --models "[bert]" --lengths "[4096, 8192]" --patterns "[sliding_window]"
    hf-sparse bench-model --quick true                       # smoke run on tiny shapes (~1 minute)
    hf-sparse bench-model --config my_bench.yaml --repeats 5 # settings from YAML, then the overrides
    hf-sparse bench-model --config configs/bench/bert_long.yaml  # the long-input targets (~30 minutes)
    hf-sparse bench-model --pattern_options.bigbird.block_size 32 --interleave false

Every ``BenchConfig`` field is a YAML key and a ``--key value`` override, values parsed as YAML
(:mod:`hf_sparse.cli.settings`).

Models (random init, fp32, batch 1, all dropout probabilities 0): a BERT-base-shaped encoder
(``BertConfig()`` + a classification head, positions extended with ``hf_sparse.extend_positions``), a
GPT-2-small-shaped decoder (``GPT2Config()`` + LM head, positions extended) at each length, and a
ViT-base-shaped model (``ViTConfig()`` + classification head) at each image size through
``interpolate_pos_encoding=True`` (448 px = 785 tokens, 896 px = 3,137 tokens). ``local_2d`` runs on ViT, the
other patterns on the text models. Windows follow ``--density`` (about 1/8 of the dense pairs) unless given.

Modes: ``inference`` (forward under ``torch.no_grad()``, eval mode) and ``train`` (forward with labels +
``loss.backward()``, train mode, gradients zeroed to ``None`` before each step; no optimizer step).

Time: median wall time of ``--repeats`` steps after ``--warmup`` steps; tokens/s = batch·tokens / median.
Speed-up = dense median / pattern median for the same model, mode and length, measured in the same run.
Interleaved (the default; ``timing: interleaved``): the rows of one model, mode and length (dense and each
pattern) are built side by side, each in its own process, and take their steps in turn, one process stepping
at a time, in reverse order every other round (``hf_sparse.bench.isolated.run_interleaved``), so a change of the
machine's speed during the run slows dense and sparse rows alike instead of whichever ran then. Rows whose
estimated memory does not fit the budget side by side, and ``--interleave false``, run one after the other
(``timing: alone``).

Memory (``hf_sparse.bench.profiling``): each row runs in its own child process (forked after the imports, before
any torch work). After the model and inputs are built the child records its resident set (VmRSS) and resets
the kernel's peak-RSS mark (``/proc/self/clear_refs``, "5"); ``peak_mem_mb`` is the peak RSS (VmHWM) over
warm-up and timed runs minus that baseline, the same for dense and sparse rows (gradients, activations,
masks and kernel workspaces count; weights do not). Where the mark cannot be reset the process's
``ru_maxrss`` is used instead and ``memory_method`` says so. Resident-set peaks also move with glibc's caching
of freed memory (a few percent run to run), so after the timed runs each row makes one more step under
``hf_sparse.bench.profiling.PeakAllocated``: ``alloc_peak_mb`` is the most bytes of PyTorch tensors alive at once in
that step (the profiler's allocation events; the same in every run of the same code). That step starts cold:
sparse rows drop hf_sparse's cached masks and plans first, so building them and holding them count.

Rows too large for the machine are skipped, not crashed on: a row whose estimated process memory (libraries,
weights, gradients, activations that grow with the length, LM-head logits; attention itself not counted)
exceeds ``--max_memory_gb`` (default 75% of the memory available at start) is not started, and every child
runs under ``RLIMIT_DATA`` = that budget, so a failed
allocation or a killed child becomes ``status: skipped`` with the reason.

Allocator: glibc's defaults unless ``--malloc_mmap_threshold_mb`` and ``--malloc_trim_threshold_mb`` are given;
then every row's process fixes them first (``hf_sparse.bench.profiling.set_malloc_thresholds``: dense and sparse rows
alike), so activations under the mmap threshold are reused between steps instead of page-faulted in again.

Results: ``<out>/bench_model.json`` (settings, machine, rows) and ``<out>/bench_model.csv`` (one line per row);
a table is printed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_sparse.cli.settings import parse_command

from .isolated import run_interleaved, run_isolated
from .profiling import allocator_env, available_memory_gb, check_malloc_thresholds, cpu_description
from .rows import Row, estimate_gb, run_row, tokens_of

MODELS = ("bert", "gpt2", "vit")
IMAGE_PATTERNS = ("local_2d",)
MODES = ("inference", "train")


@dataclass
class BenchConfig:
    """Every setting of the benchmark (YAML keys = these names; ``--key value`` overrides them)."""

    models: list[str] = field(default_factory=lambda: list(MODELS))
    lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096, 8192])
    image_sizes: list[int] = field(default_factory=lambda: [448, 896])
    patterns: list[str] = field(default_factory=lambda: ["sliding_window", "bigbird", "local_2d"])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    backend: str = "auto"
    density: float = 0.125
    window: int | None = None
    num_global: int = 0
    pattern_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeats: int = 3
    warmup: int = 1
    threads: int = 2
    batch: int = 1
    max_memory_gb: float | None = None
    timeout_s: float = 3600.0
    seed: int = 0
    quick: bool = False
    out: str = "results/bench_model"
    malloc_mmap_threshold_mb: int | None = None
    malloc_trim_threshold_mb: int | None = None
    interleave: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (("models", MODELS), ("modes", MODES)):
            bad = sorted(set(getattr(self, name)) - set(allowed))
            if bad:
                raise ValueError(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
        if not isinstance(self.interleave, bool):
            raise ValueError(f"interleave must be true or false, got {self.interleave!r}")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if self.repeats < 1 or self.warmup < 0 or self.threads < 1 or self.batch < 1:
            raise ValueError("repeats, threads and batch must be >= 1 and warmup >= 0")
        check_malloc_thresholds(self.malloc_mmap_threshold_mb, self.malloc_trim_threshold_mb)

    def apply_quick(self) -> None:
        """Tiny shapes for a smoke run (and the test of this script); one thread, since tiny ops on a busy
        machine time mostly OpenMP waits."""
        self.lengths, self.image_sizes = [128, 256], [32, 64]
        self.repeats, self.warmup, self.threads = min(self.repeats, 2), min(self.warmup, 1), 1
        self.pattern_options = {"bigbird": {"block_size": 16}, **self.pattern_options}


def pattern_options(cfg: BenchConfig, pattern: str, model_name: str, size: int) -> dict[str, Any]:
    """Options of ``pattern`` for one row: windows from ``cfg.density`` unless fixed in the config."""
    options = dict(cfg.pattern_options.get(pattern, {}))
    tokens = tokens_of(model_name, size, cfg.quick)
    if pattern == "sliding_window" and "window" not in options:
        options["window"] = cfg.window or max(1, round((cfg.density * tokens - 1) / 2))
    if pattern == "local_2d" and "window" not in options:
        side = math.isqrt(tokens - 1)
        options["window"] = max(1, round((math.sqrt(cfg.density) * side - 1) / 2))
    if cfg.num_global and "num_global" not in options:
        options["num_global"] = cfg.num_global
    return options


# ---------------------------------------------------------------------------------------------- driver
def plan_rows(cfg: BenchConfig) -> list[dict[str, Any]]:
    rows = []
    for model_name in cfg.models:
        sizes = cfg.image_sizes if model_name == "vit" else cfg.lengths
        wanted = [p for p in cfg.patterns if (p in IMAGE_PATTERNS) == (model_name == "vit")]
        for size in sizes:
            for mode in cfg.modes:
                for pattern in ["dense", *wanted]:
                    options = pattern_options(cfg, pattern, model_name, size) if pattern != "dense" else {}
                    rows.append({"model": model_name, "mode": mode, "pattern": pattern, "size": size,
                                 "tokens": tokens_of(model_name, size, cfg.quick), "options": options})
    return rows


def group_rows(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows of the same model, mode and size (dense and each pattern), in order: the rows timed together."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["mode"], row["size"]), []).append(row)
    return list(groups.values())


def run_group(group: list[dict[str, Any]], cfg: BenchConfig) -> None:
    """Run the rows of one case (dense and each pattern) in their processes and fill in their results: stepping
    in turn when ``cfg.interleave`` and their estimates fit the memory budget together, else one after the other.
    Rows whose own estimate exceeds the budget are skipped."""
    runnable = []
    for row in group:
        row["backend"] = "sdpa" if row["pattern"] == "dense" else cfg.backend
        row["est_mem_gb"] = round(estimate_gb(row["model"], row["tokens"] * cfg.batch, row["mode"], cfg.quick), 2)
        if row["est_mem_gb"] > cfg.max_memory_gb:
            row.update(status="skipped", reason=f"estimated {row['est_mem_gb']} GB > budget {cfg.max_memory_gb} GB")
        else:
            runnable.append(row)
    keys = ("backend", "threads", "batch", "seed", "quick", "warmup", "repeats", "malloc_mmap_threshold_mb",
            "malloc_trim_threshold_mb")
    specs = [{**row, **{k: getattr(cfg, k) for k in keys}} for row in runnable]
    side_by_side = sum(row["est_mem_gb"] for row in runnable) <= cfg.max_memory_gb
    if cfg.interleave and len(runnable) > 1 and side_by_side:
        results = run_interleaved(Row, specs, warmup=cfg.warmup, repeats=cfg.repeats, memory_gb=cfg.max_memory_gb,
                                  timeout_s=cfg.timeout_s)
        for row, result in zip(runnable, results, strict=True):
            row.update(result, timing="interleaved")
        return
    for row, spec in zip(runnable, specs, strict=True):
        row.update(run_isolated(run_row, spec, memory_gb=cfg.max_memory_gb, timeout_s=cfg.timeout_s), timing="alone")


def finish_rows(rows: list[dict[str, Any]], cfg: BenchConfig) -> None:
    """Medians, tokens/s and the ratios against the dense row of the same model, mode and length."""
    for row in rows:
        if row["status"] == "ok":
            row["time_s"] = statistics.median(row["times_s"])
            row["tokens_per_s"] = round(cfg.batch * row["tokens"] / row["time_s"], 1)
    dense = {(r["model"], r["mode"], r["size"]): r for r in rows if r["pattern"] == "dense" and r["status"] == "ok"}
    for row in rows:
        ref = dense.get((row["model"], row["mode"], row["size"]))
        ok = row["status"] == "ok" and ref is not None
        row["speedup_vs_dense"] = round(ref["time_s"] / row["time_s"], 3) if ok else None
        for key, ratio in (("peak_mem_mb", "mem_ratio_vs_dense"), ("alloc_peak_mb", "alloc_ratio_vs_dense")):
            row[ratio] = round(row[key] / ref[key], 3) if ok and ref.get(key) else None


CSV_FIELDS = ["model", "mode", "tokens", "size", "pattern", "pattern_desc", "backend", "backends_used", "density",
              "status", "reason", "timing", "time_s", "tokens_per_s", "speedup_vs_dense", "peak_mem_mb",
              "mem_ratio_vs_dense", "alloc_peak_mb", "alloc_ratio_vs_dense", "est_mem_gb", "memory_method"]


def write_results(rows: list[dict[str, Any]], cfg: BenchConfig, meta: dict[str, Any]) -> tuple[Path, Path]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "bench_model.json", out / "bench_model.csv"
    json_path.write_text(json.dumps({"meta": meta, "config": dataclasses.asdict(cfg), "rows": rows}, indent=1))
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "+".join(v) if k == "backends_used" else v for k, v in row.items() if k in CSV_FIELDS})
    return json_path, csv_path


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':5} {'mode':9} {'tokens':>6} {'pattern':14} {'backend':12} {'density':>7} {'time s':>8} "
          f"{'tok/s':>8} {'speedup':>7} {'peak MB':>8} {'mem/dense':>9} {'alloc MB':>8} {'alloc/dense':>11}  status")
    for r in rows:
        print(f"{r['model']:5} {r['mode']:9} {r['tokens']:>6} {r['pattern']:14} {'+'.join(r.get('backends_used', [])) or '-':12} "
              f"{_fmt(r.get('density'), '.1%'):>7} {_fmt(r.get('time_s'), '.3f'):>8} {_fmt(r.get('tokens_per_s'), '.0f'):>8} "
              f"{_fmt(r.get('speedup_vs_dense'), '.2f'):>7} {_fmt(r.get('peak_mem_mb'), '.0f'):>8} "
              f"{_fmt(r.get('mem_ratio_vs_dense'), '.2f'):>9} {_fmt(r.get('alloc_peak_mb'), '.1f'):>8} "
              f"{_fmt(r.get('alloc_ratio_vs_dense'), '.3f'):>11}  {r['status']}{': ' + r['reason'] if r.get('reason') else ''}")


def machine() -> dict[str, Any]:
    import torch
    import transformers

    return {"platform": platform.platform(), **cpu_description(), "allocator_env": allocator_env(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}


QUICK_KEYS = ("lengths", "image_sizes", "repeats", "warmup", "threads")  # quick sets them; overrides still win


def parse_config(argv: list[str] | None = None) -> BenchConfig:
    """The settings: ``BenchConfig`` defaults, ``--config FILE.yaml``, ``--key value`` overrides
    (:mod:`hf_sparse.cli.settings`); ``quick: true`` then shrinks the shapes, except keys set on the command line."""
    cfg, args = parse_command(BenchConfig, argv, description=__doc__)
    if cfg.quick:
        explicit = {key: getattr(cfg, key) for key in QUICK_KEYS if key in args.overridden}
        cfg.apply_quick()
        for key, value in explicit.items():
            setattr(cfg, key, value)
    if cfg.max_memory_gb is None:
        cfg.max_memory_gb = available_memory_gb(0.75)
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(argv)
    import transformers as tf

    from hf_sparse.kernels import backend_names

    for name in ("BertForSequenceClassification", "GPT2LMHeadModel", "ViTForImageClassification"):
        getattr(tf, name)  # import the model code once, before the per-row processes are forked

    if cfg.backend not in backend_names():
        raise SystemExit(f"unknown backend {cfg.backend!r}; choose one of: {', '.join(backend_names())}")
    rows = plan_rows(cfg)
    print(f"bench_model: {len(rows)} rows, backend={cfg.backend}, threads={cfg.threads}, "
          f"memory budget {cfg.max_memory_gb} GB", flush=True)
    done = 0
    for group in group_rows(rows):
        run_group(group, cfg)
        for row in group:
            done += 1
            print(f"[{done}/{len(rows)}] {row['model']} {row['mode']} {row['tokens']} {row['pattern']}: {row['status']}"
                  + (f" {statistics.median(row['times_s']):.3f}s" if row["status"] == "ok" else f" ({row['reason']})"),
                  flush=True)
    finish_rows(rows, cfg)
    meta = {"machine": machine(), "command": "hf-sparse bench-model " + " ".join(argv)}
    json_path, csv_path = write_results(rows, cfg, meta)
    print_table(rows)
    print(f"wrote {json_path} and {csv_path}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
