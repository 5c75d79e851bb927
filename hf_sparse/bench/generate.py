"""Generation speed and KV-cache memory: dense SDPA vs ``sliding_window`` decoding from a window cache.

    hf-sparse bench-generate                                     # 512-token prompt, 8,192 new tokens (long)
    hf-sparse bench-generate --new_tokens 4096 --checkpoints "[1024, 2048, 4096]"
    hf-sparse bench-generate --windows "[256]" --num_global 1 --output_dir results/bench_generate

Every ``GenerateBenchConfig`` field is a YAML key and a ``--key value`` override (:mod:`hf_sparse.cli.settings`).

Model: a GPT-2-small-shaped decoder (``GPT2Config()`` + LM head, random init, fp32, batch 1, dropout off; the
``model_config`` overrides shrink it), its positions extended (``hf_sparse.extend_positions``) to cover prompt
plus generated tokens. Rows: ``dense`` (Transformers' SDPA, full ``DynamicCache``) and one row per window
(``patch_model(model, "sliding_window", window=w, num_global=g)``, whose cache keeps only the window and the
global tokens, see :mod:`hf_sparse.decoding`).

Each row runs in its own process. Interleaved (the default, ``hf_sparse.bench.isolated.run_interleaved``): all
rows are built side by side and take their steps in turn, one process at a time, in reverse order every other
round, so a change of the machine's speed (other jobs) slows every row alike; ``--interleave false`` runs them
one after the other. A row: built, then a warm-up generation of ``warmup_tokens`` tokens from the prompt's
first 64; its first step is the prompt's forward into a fresh cache (``model(prompt,
cache=DynamicCache(config), use_cache=True, logits_to_keep=1)``: ``prefill_s``), each later step
``chunk_tokens`` greedy one-token forwards with that cache (``model(next_token, cache=cache)``, each timed).
Each checkpoint ``c`` (decode steps done; the cache then covers ``prompt + c`` positions) reports
``tokens_per_s`` (``c`` / decode time so far), ``interval_tokens_per_s`` (since the previous checkpoint: flat for
the window cache, falling for dense) and ``cache_bytes`` (:func:`hf_sparse.decoding.held_bytes`: the storage of
the key and value tensors the cache holds). ``peak_rss_mb`` is the peak resident set from the prompt's forward
to the end minus the resident set before it (``PeakMemory``). Per window row: ``speedup`` (its tokens/s over
dense's at each checkpoint) and ``cache_ratio`` (its cache bytes over dense's).

Results: ``<output_dir>/bench_generate.json`` (settings, machine, rows) and ``bench_generate.csv`` (a line per
row and checkpoint); a table is printed.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_sparse.cli.settings import ConfigError, parse_command

from .isolated import run_interleaved, run_isolated
from .profiling import PeakMemory, available_memory_gb

#: Prompt tokens of the warm-up generation (a short one: it warms the code paths, not the cache).
WARMUP_PROMPT = 64


@dataclass
class GenerateBenchConfig:
    """Settings of ``hf-sparse bench-generate`` (see the module docstring)."""

    prompt_tokens: int = 512
    new_tokens: int = 8192
    checkpoints: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192])
    windows: list[int] = field(default_factory=lambda: [256, 512])
    num_global: int = 0
    dense: bool = True
    model_config: dict[str, Any] = field(default_factory=dict)
    warmup_tokens: int = 16
    chunk_tokens: int = 32
    interleave: bool = True
    seed: int = 0
    threads: int | None = None
    record_tokens: bool = False
    output_dir: str = "results/bench_generate"
    timeout_s: float = 14400.0
    max_memory_gb: float | None = None

    def __post_init__(self) -> None:
        for key in ("prompt_tokens", "new_tokens", "chunk_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}; pass --{key} 1 or more")
        bad = [c for c in self.checkpoints if not 1 <= c <= self.new_tokens]
        if bad or not self.checkpoints:
            raise ConfigError(f"checkpoints must be 1..new_tokens ({self.new_tokens}), got {self.checkpoints}; "
                              "pass e.g. --checkpoints \"[1024, 2048]\"")
        if any(w < 1 for w in self.windows) or self.num_global < 0:
            raise ConfigError(f"windows must be >= 1 and num_global >= 0, got windows={self.windows}, "
                              f"num_global={self.num_global}")
        if not self.windows and not self.dense:
            raise ConfigError("nothing to run: pass --dense true or some --windows")
        self.checkpoints = sorted(set(self.checkpoints))


def row_specs(cfg: GenerateBenchConfig) -> list[dict[str, Any]]:
    """One spec per row: ``dense`` (if asked) then each window."""
    common = {k: v for k, v in asdict(cfg).items() if k not in ("windows", "dense", "output_dir", "interleave")}
    rows = [{"row": "dense", "window": None, **common}] if cfg.dense else []
    return rows + [{"row": f"sliding_window({w})", "window": w, **common} for w in cfg.windows]


def build_model(spec: dict[str, Any]):
    """The row's model (seeded, eval mode), patched when the row has a window, and its prompt ``[1, L]``."""
    import torch

    from hf_sparse.lab.models import random_model
    from hf_sparse.patch import patch_model
    from hf_sparse.positions import extend_positions

    torch.manual_seed(spec["seed"])
    overrides = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **spec["model_config"])
    model = random_model("gpt2", "lm", **overrides).eval()
    model.set_attn_implementation("sdpa")
    total = spec["prompt_tokens"] + spec["new_tokens"] + 1
    extend_positions(model, max(total, model.config.n_positions))
    if spec["window"] is not None:
        patch_model(model, "sliding_window", window=spec["window"], num_global=spec["num_global"])
    gen = torch.Generator().manual_seed(spec["seed"] + 1)
    prompt = torch.randint(0, model.config.vocab_size, (1, spec["prompt_tokens"]), generator=gen)
    return model, prompt


def greedy(model, prompt, steps: int):
    """Greedy decoding with the model's cache: ``tokens [1, steps + 1]`` (the first from the prompt's forward)."""
    import torch

    row = GenerationRow.__new__(GenerationRow)
    row.model, row.prompt, row.cache, row.tokens, row.generated, row.decode_s = model, prompt, None, [], 0, 0.0
    with torch.no_grad():
        row.prefill()
        for _ in range(steps):
            row.decode()
    return torch.cat(row.tokens, dim=1)


class GenerationRow:
    """One row in its own process (``run_interleaved``): built and warmed up on creation; each :meth:`step` is the
    prompt's forward (the first step) or ``chunk_tokens`` one-token forwards; :meth:`finish` reports."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
        self.spec = spec
        self.model, self.prompt = build_model(spec)
        greedy(self.model, self.prompt[:, :WARMUP_PROMPT], spec["warmup_tokens"])
        self.cache, self.tokens, self.points = None, [], []
        self.generated, self.decode_s, self.prefill_s = 0, 0.0, 0.0
        self.peak = PeakMemory().__enter__()

    @property
    def steps(self) -> int:
        return 1 + -(-self.spec["new_tokens"] // self.spec["chunk_tokens"])

    def prefill(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        start = time.perf_counter()
        logits = self.model(input_ids=self.prompt, cache=self.cache, use_cache=True, logits_to_keep=1).logits
        self.tokens.append(logits[:, -1:].argmax(-1))
        self.prefill_s = time.perf_counter() - start

    def decode(self) -> None:
        start = time.perf_counter()
        logits = self.model(input_ids=self.tokens[-1], cache=self.cache, use_cache=True).logits
        self.tokens.append(logits[:, -1:].argmax(-1))
        self.decode_s += time.perf_counter() - start
        self.generated += 1

    def step(self) -> None:
        import torch

        from hf_sparse.decoding import held_bytes

        with torch.no_grad():
            if self.cache is None:
                self.prefill()
                return
            for _ in range(min(self.spec["chunk_tokens"], self.spec["new_tokens"] - self.generated)):
                self.decode()
                if self.generated in self.spec["checkpoints"]:
                    self.record(held_bytes(self.cache))

    def record(self, cache_bytes: int) -> None:
        step, seconds = self.generated, self.decode_s
        prev = self.points[-1] if self.points else {"generated": 0, "decode_s": 0.0}
        self.points.append({"generated": step, "decode_s": round(seconds, 3), "tokens_per_s": round(step / seconds, 2),
                            "interval_tokens_per_s": round((step - prev["generated"]) / (seconds - prev["decode_s"]), 2),
                            "cached_positions": self.spec["prompt_tokens"] + step, "cache_bytes": cache_bytes})

    def finish(self) -> dict[str, Any]:
        import torch

        self.peak.__exit__(None, None, None)
        result = {"prefill_s": round(self.prefill_s, 3), "checkpoints": self.points, "peak_rss_mb": self.peak.growth_mb,
                  "memory_method": self.peak.method, "threads": torch.get_num_threads(),
                  "cache_layers": sorted({type(layer).__name__ for layer in self.cache.layers})}
        if self.spec["record_tokens"]:
            result["prompt"] = self.prompt[0].tolist()
            result["tokens"] = torch.cat(self.tokens, dim=1)[0].tolist()
        return result


def measure_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One row from start to end in the calling process (``interleave: false``)."""
    row = GenerationRow(spec)
    for _ in range(row.steps):
        row.step()
    return row.finish()


def summarize(rows: list[dict[str, Any]]) -> None:
    """Add ``speedup`` and ``cache_ratio`` (vs the dense row, per checkpoint) to each window row."""
    dense = next((r for r in rows if r["row"] == "dense" and r["status"] == "ok"), None)
    if dense is None:
        return
    by_step = {p["generated"]: p for p in dense["checkpoints"]}
    for row in rows:
        if row["row"] == "dense" or row["status"] != "ok":
            continue
        for point in row["checkpoints"]:
            base = by_step[point["generated"]]
            point["speedup"] = round(point["tokens_per_s"] / base["tokens_per_s"], 2)
            point["cache_ratio"] = round(point["cache_bytes"] / base["cache_bytes"], 4)


def write_results(rows: list[dict[str, Any]], cfg: GenerateBenchConfig, meta: dict[str, Any]) -> tuple[Path, Path]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / "bench_generate.json", out / "bench_generate.csv"
    json_path.write_text(json.dumps({"settings": asdict(cfg), **meta, "rows": rows}, indent=1) + "\n")
    fields = ["row", "window", "num_global", "prompt_tokens", "generated", "decode_s", "tokens_per_s",
              "interval_tokens_per_s", "cached_positions", "cache_bytes", "speedup", "cache_ratio", "prefill_s",
              "peak_rss_mb", "status"]
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            for point in row.get("checkpoints") or [{}]:
                writer.writerow({**row, **point})
    return json_path, csv_path


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'row':<22} {'generated':>9} {'tok/s':>8} {'interval':>9} {'cache MB':>9} {'speed-up':>8} "
          f"{'cache/dense':>11} {'peak RSS MB':>11}")
    for row in rows:
        if row["status"] != "ok":
            print(f"{row['row']:<22} {row['status']}: {row.get('reason', '')}")
            continue
        for p in row["checkpoints"]:
            print(f"{row['row']:<22} {p['generated']:>9} {p['tokens_per_s']:>8.2f} {p['interval_tokens_per_s']:>9.2f} "
                  f"{p['cache_bytes'] / 2**20:>9.2f} {p.get('speedup', 1.0):>8.2f} {p.get('cache_ratio', 1.0):>11.4f} "
                  f"{row['peak_rss_mb']:>11.1f}")


def run(cfg: GenerateBenchConfig, command: str = "") -> list[dict[str, Any]]:
    """Run every row in its own process, write the results, return the rows."""
    from .model import machine

    if cfg.max_memory_gb is None:
        cfg.max_memory_gb = available_memory_gb(0.75)
    specs = row_specs(cfg)
    print(f"bench_generate: {', '.join(s['row'] for s in specs)} ({cfg.prompt_tokens} + {cfg.new_tokens} tokens, "
          f"{'interleaved' if cfg.interleave else 'one after the other'})", flush=True)
    if cfg.interleave:
        steps = 1 + -(-cfg.new_tokens // cfg.chunk_tokens)
        results = run_interleaved(GenerationRow, specs, warmup=0, repeats=steps, memory_gb=cfg.max_memory_gb,
                                  timeout_s=cfg.timeout_s)
    else:
        results = [run_isolated(measure_row, spec, memory_gb=cfg.max_memory_gb, timeout_s=cfg.timeout_s)
                   for spec in specs]
    rows = []
    for spec, result in zip(specs, results, strict=True):
        result.pop("times_s", None)
        rows.append({"row": spec["row"], "window": spec["window"], "num_global": cfg.num_global,
                     "prompt_tokens": cfg.prompt_tokens, "timing": "interleaved" if cfg.interleave else "alone",
                     **result})
    summarize(rows)
    json_path, csv_path = write_results(rows, cfg, {"machine": machine(), "command": command})
    print_table(rows)
    print(f"wrote {json_path} and {csv_path}")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg, _ = parse_command(GenerateBenchConfig, argv, description=__doc__)
    import transformers

    transformers.GPT2LMHeadModel  # noqa: B018 - import the model code once, before the row processes fork
    rows = run(cfg, "hf-sparse bench-generate " + " ".join(argv))
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
