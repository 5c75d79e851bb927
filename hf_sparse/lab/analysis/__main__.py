"""Attention-mass recall of sparse patterns on a model and real inputs: which pattern keeps how much of the
dense model's attention, per layer and head, at equal density; plus pictures of what each head kept.

    hf-sparse analyze --config configs/analysis/minilm_rt.yaml                 # MiniLM, Rotten Tomatoes
    hf-sparse analyze --model results/gate_minilm/checkpoints/model             # include the trained gate
    hf-sparse analyze --model gpt2 --model_config.n_layer 2 --data random       # random-init GPT-2
    hf-sparse analyze --config configs/analysis/minilm_rt.yaml --densities "[0.25, 0.5]" --seq_len 256

Every setting of ``AnalyzeConfig`` is a YAML key and a ``--key value`` override (values parsed as YAML).

Prints the recall table (one line per pattern: density, mean recall, worst head, per-layer recall) and writes
to ``out_dir``: recall.csv (every layer and head), recall.json (settings, patterns, summary), table.txt, and PNGs:
kept_<pattern>.png (layers x heads: dense attention + kept cells), recall_<pattern>.png (heatmap) and
recall_vs_density.png. ``learned_gate`` is evaluated when the model carries trained gates
(``hf-sparse train-gate``); otherwise it is skipped with a note.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_sparse.capture import capture_attention
from hf_sparse.cli.settings import config_dict, parse_command
from hf_sparse.learned import LearnedGate, gates
from hf_sparse.patch import patched_modules
from hf_sparse.patterns import make_pattern

from . import pictures as head_pictures
from .budget import pattern_at_density
from .recall import BlockOracle, analyze
from .sources import load_model, model_inputs


@dataclass
class AnalyzeConfig:
    """Settings (YAML keys / ``--key value`` overrides, see :mod:`hf_sparse.cli.settings`)."""

    model: str = "minilm"                    # minilm | bert | gpt2 | vit (random init) | folder | hub id
    model_config: dict[str, Any] = field(default_factory=dict)   # config overrides (random-init sizes)
    data: str = "rotten_tomatoes"            # rotten_tomatoes (packed reviews) | random | digits (images)
    seq_len: int = 512                       # tokens per packed sequence (text)
    num_sequences: int = 8                   # batch analysed (held-out reviews, disjoint from gate training)
    block_size: int = 32                     # block size of bigbird / topk_blocks / learned_gate / oracle
    densities: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5])
    patterns: list[str] = field(default_factory=lambda: ["sliding_window", "bigbird", "topk_blocks", "learned_gate"])
    num_local_blocks: int = 1
    num_global: int = 1
    oracle: bool = True                      # also the best possible block choice (upper bound)
    picture_density: float = 0.25            # pictures of the configs at this density
    picture_cells: int = 64
    out_dir: str = "results/analysis_minilm"
    seed: int = 0
    num_threads: int = 2


def gate_pattern(model: torch.nn.Module) -> LearnedGate | None:
    """The ``learned_gate`` the model was patched with, if it carries gates."""
    configs = [c for c in patched_modules(model).values() if isinstance(c.pattern, LearnedGate)]
    return configs[0].pattern if configs and gates(model) else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, _ = parse_command(AnalyzeConfig, argv, description=__doc__)
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # 1. model and inputs; one dense forward records every self-attention call
    model = load_model(cfg.model, cfg.model_config)
    inputs = model_inputs(model, cfg.model, cfg.data, cfg.seq_len, cfg.num_sequences, part="eval", seed=cfg.seed)
    captures = capture_attention(model, inputs)
    length, causal = captures[0].ctx.kv_len, captures[0].causal
    print(f"{cfg.model}: {len(captures)} self-attention layers, {cfg.num_sequences} x {length} positions "
          f"({cfg.data}), causal={causal}")

    # 2. the patterns, each family at each density
    gate = gate_pattern(model)
    patterns: dict[str, Any] = {"dense": make_pattern("dense")}
    picture_labels = []
    for density in cfg.densities:
        for family in cfg.patterns:
            options = dict(block_size=cfg.block_size, causal=causal, num_local_blocks=cfg.num_local_blocks,
                           num_global=cfg.num_global)
            if family == "learned_gate":
                if gate is None:
                    continue
                options.update(block_size=gate.block_size, num_local_blocks=gate.num_local_blocks,
                               num_global=gate.num_global, max_distance=gate.max_distance)
            pattern = pattern_at_density(family, density, length, **options)
            label = f"{family}@{density:.3g}"
            patterns[label] = pattern
            if density == cfg.picture_density:
                picture_labels.append(label)
        if cfg.oracle:
            topk = pattern_at_density("topk_blocks", density, length, block_size=cfg.block_size, causal=causal,
                                      num_local_blocks=cfg.num_local_blocks, num_global=cfg.num_global)
            patterns[f"block_oracle@{density:.3g}"] = BlockOracle(cfg.block_size, topk.k, cfg.num_local_blocks,
                                                                  cfg.num_global)
    if "learned_gate" in cfg.patterns and gate is None:
        print("learned_gate skipped: the model has no trained gates (train them with `hf-sparse train-gate` and "
              "pass --model <its checkpoints/model folder>)")
    for label, pattern in patterns.items():
        print(f"  {label:24s} {pattern.describe()}")

    # 3. recall per layer and head, pictures of the first sequence
    table, pictures = analyze(captures, patterns, query_mask=inputs.get("attention_mask"), cells=cfg.picture_cells)
    text = table.format()
    print(text)

    # 4. write everything
    (out / "table.txt").write_text(text + "\n")
    table.to_csv(out / "recall.csv")
    elapsed = time.perf_counter() - started
    table.to_json(out / "recall.json", rows=False, settings=config_dict(cfg), patterns={k: p.describe() for k, p in patterns.items()},
                  sequence_length=length, wall_s=round(elapsed, 1))
    written = [out / "table.txt", out / "recall.csv", out / "recall.json"]
    for label in ["dense", *picture_labels]:
        safe = label.replace("@", "_at_")
        head_pictures.plot_kept_heads(pictures[label], out / f"kept_{safe}.png", title=f"{cfg.model}: {patterns[label].describe()}")
        head_pictures.plot_recall_heatmap(table, label, out / f"recall_{safe}.png")
        written += [out / f"kept_{safe}.png", out / f"recall_{safe}.png"]
    head_pictures.plot_recall_vs_density(table, out / "recall_vs_density.png")
    written.append(out / "recall_vs_density.png")
    for path in written:
        print(f"wrote {path}")
    print(f"done in {elapsed:.0f} s")
    return json.loads((out / "recall.json").read_text())


if __name__ == "__main__":
    main()
