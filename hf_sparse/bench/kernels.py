"""Kernel benchmark: sparse attention backends against dense SDPA, measured in the same run.

    hf-sparse bench-kernels                      # CPU fp32, the full grid (about 20 min on 2 cores)
    hf-sparse bench-kernels --lengths "[1024]" --patterns "[sliding_window]" --repeats 3   # a quick look
    hf-sparse bench-kernels --device cuda --dtype bfloat16                                # on a GPU
    hf-sparse bench-kernels --config my_kernels.yaml --backends "[blocksparse]"

Every ``KernelBenchConfig`` field is a YAML key and a ``--key value`` override, values parsed as YAML
(:mod:`hf_sparse.cli.settings`).

For each pattern, length and mode (forward; forward+backward) it times dense SDPA without a mask, dense
SDPA with the pattern as a boolean mask, and each sparse backend, interleaving the variants and taking
medians after warm-up. Ratios are time / dense SDPA time from the same run. Writes
``<out>/<device>-<dtype>.json`` and ``.csv`` and prints a table.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_sparse.cli.settings import parse_command
from hf_sparse.kernels import BACKENDS, AttentionCall, choose_backend
from hf_sparse.kernels.blocksparse import plan_for
from hf_sparse.patterns import MaskContext, Pattern, allowed_matrix, make_pattern

from .profiling import allocator_env, cpu_description

MODES = ("fwd", "fwd+bwd")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class KernelBenchConfig:
    """Every setting of the kernel benchmark (YAML keys = these names; ``--key value`` overrides them)."""

    patterns: list[str] = field(default_factory=lambda: ["sliding_window", "sliding_window_256", "bigbird", "strided",
                                                         "local_2d"])
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    backends: list[str] = field(default_factory=lambda: ["blocksparse", "flex"])  # timed besides dense / masked SDPA
    batch: int = 1
    heads: int = 12
    head_dim: int = 64
    dtype: str = "float32"
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    repeats: int = 5
    warmup: int = 2
    threads: int | None = None  # torch threads (null: torch's choice)
    out: str = "results/bench_kernels"

    def __post_init__(self) -> None:
        for name, allowed in (("modes", MODES), ("backends", tuple(BACKENDS))):
            bad = sorted(set(getattr(self, name)) - set(allowed))
            if bad:
                raise ValueError(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


def pattern_for(name: str, length: int) -> tuple[Pattern, MaskContext]:
    """The benchmark's pattern at ``length``, tuned to keep about 1/8 of the attention matrix."""
    ctx = MaskContext.for_length(length)
    if name == "sliding_window":
        return make_pattern(name, window=length // 16), ctx
    if name == "sliding_window_256":  # a fixed window: density falls as the length grows
        return make_pattern("sliding_window", window=256), ctx
    if name == "bigbird":  # 3 window + 2 global + 3 random blocks of 64 per query block
        return make_pattern(name, block_size=max(64, length // 64)), ctx
    if name == "strided":
        return make_pattern(name, stride=16, window=length // 32), ctx
    if name == "local_2d":
        rows = 2 ** (int(math.log2(length)) // 2)
        cols = length // rows
        window = max(1, round((math.sqrt(length / 8) - 1) / 2))
        pattern = make_pattern(name, window=window, grid=(rows, cols), num_prefix=0)
        return pattern, MaskContext.for_length(rows * cols)
    raise ValueError(f"unknown benchmark pattern {name!r}")


def time_variants(variants: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per variant; variants are interleaved so drift hits all of them alike."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_variants(call: AttentionCall, backends: list[str], backward: bool, device: str) -> dict:
    q, k, v = call.query, call.key, call.value
    bool_mask = allowed_matrix(call.pattern, call.ctx, q.device)

    def run(fn):
        def timed():
            if backward:
                out = fn()
                out.backward(torch.ones_like(out))
                for t in (q, k, v):
                    t.grad = None
            else:
                with torch.no_grad():
                    fn()
            _sync(device)
        return timed

    variants = {
        "dense_sdpa": run(lambda: F.scaled_dot_product_attention(q, k, v)),
        "masked_sdpa": run(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask)),
    }
    for name in backends:
        probe = AttentionCall(q, k, v, call.pattern, call.ctx) if backward else \
            AttentionCall(q.detach(), k.detach(), v.detach(), call.pattern, call.ctx)
        if BACKENDS[name].unsupported(probe) is None:
            variants[name] = run(lambda name=name: BACKENDS[name].run(AttentionCall(q, k, v, call.pattern, call.ctx))[0])
    return variants


@dataclass
class Row:
    pattern: str
    length: int
    mode: str
    token_density: float
    block_density: float
    block_size: int
    auto_backend: str
    seconds: dict[str, float] = field(default_factory=dict)
    ratio_vs_dense: dict[str, float] = field(default_factory=dict)


def bench_row(name: str, length: int, backward: bool, cfg: KernelBenchConfig) -> Row:
    pattern, ctx = pattern_for(name, length)
    length = ctx.q_len
    gen = torch.Generator().manual_seed(0)
    shape = (cfg.batch, cfg.heads, length, cfg.head_dim)
    dtype = getattr(torch, cfg.dtype)
    q, k, v = (torch.randn(shape, generator=gen).to(cfg.device, dtype).requires_grad_(backward) for _ in range(3))
    call = AttentionCall(q, k, v, pattern, ctx)
    plan = plan_for(call)
    token_density = float(allowed_matrix(pattern, ctx, q.device).float().mean())
    variants = make_variants(call, cfg.backends, backward, cfg.device)
    seconds = time_variants(variants, cfg.repeats, cfg.warmup)
    dense = seconds["dense_sdpa"]
    return Row(
        pattern=pattern.describe(), length=length, mode="fwd+bwd" if backward else "fwd",
        token_density=round(token_density, 4), block_density=round(plan.computed_fraction, 4),
        block_size=plan.block_size, auto_backend=choose_backend(call),
        seconds={k: round(s, 5) for k, s in seconds.items()},
        ratio_vs_dense={k: round(s / dense, 3) for k, s in seconds.items()},
    )


def environment(cfg: KernelBenchConfig) -> dict:
    env = {
        "flex_compiled": os.environ.get("HF_SPARSE_FLEX_COMPILE") == "1", "machine": platform.machine(),
        **cpu_description(), "allocator_env": allocator_env(),
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "device": cfg.device, "dtype": cfg.dtype, "batch": cfg.batch, "heads": cfg.heads,
        "head_dim": cfg.head_dim, "repeats": cfg.repeats, "warmup": cfg.warmup,
    }
    if cfg.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def print_table(rows: list[Row], backends: list[str]) -> None:
    names = ["masked_sdpa", *backends]
    header = f"{'pattern':44s} {'L':>5s} {'mode':7s} {'tok%':>5s} {'blk%':>5s} {'dense s':>8s} " + " ".join(
        f"{n + ' ×':>14s}" for n in names) + "  auto"
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = " ".join(f"{r.ratio_vs_dense.get(n, float('nan')):14.3f}" for n in names)
        print(f"{r.pattern[:44]:44s} {r.length:5d} {r.mode:7s} {100 * r.token_density:5.1f} "
              f"{100 * r.block_density:5.1f} {r.seconds['dense_sdpa']:8.4f} {cells}  {r.auto_backend}")


def main(argv: list[str] | None = None) -> None:
    cfg, _ = parse_command(KernelBenchConfig, argv, description=__doc__)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Time compiled FlexAttention at every length (compilation happens in the warm-up, outside the timings).
    os.environ.setdefault("HF_SPARSE_FLEX_COMPILE", "1")

    rows = []
    for name in cfg.patterns:
        for length in cfg.lengths:
            for mode in cfg.modes:
                row = bench_row(name, length, mode == "fwd+bwd", cfg)
                rows.append(row)
                print(f"  {row.pattern} L={row.length} {row.mode}: " + ", ".join(
                    f"{k} {v:.3f}x" for k, v in row.ratio_vs_dense.items() if k != "dense_sdpa"), flush=True)
    print_table(rows, [b for b in cfg.backends if any(b in r.seconds for r in rows)])

    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    stem = Path(cfg.out) / f"{cfg.device}-{cfg.dtype}"
    payload = {"environment": environment(cfg), "rows": [asdict(r) for r in rows]}
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    columns = ["pattern", "length", "mode", "token_density", "block_density", "block_size", "auto_backend"]
    variants = sorted({k for r in rows for k in r.seconds})
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + [f"{v}_s" for v in variants] + [f"{v}_ratio" for v in variants])
        for r in rows:
            writer.writerow([getattr(r, c) for c in columns] + [r.seconds.get(v, "") for v in variants]
                            + [r.ratio_vs_dense.get(v, "") for v in variants])
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
