"""Train ``learned_gate`` gates by distillation: the base model stays frozen, each patched attention layer's
small gate learns to predict the dense model's block-pooled attention from block means of q and k.

    hf-sparse train-gate --config configs/analysis/gate_minilm_rt.yaml
    hf-sparse train-gate --model bert --model_config.num_hidden_layers 2 --data random --steps 5

Every setting of ``GateTrainConfig`` is a YAML key and a ``--key value`` override (values parsed as YAML).

Prints the distillation loss while training and, on held-out inputs, the attention-mass recall of
``topk_blocks`` (the untrained gate's choice), the trained gate and the block oracle at the same budget.
Writes ``out_dir``/checkpoints/model (``save_pretrained``: base weights + gates + sparse settings; reload with
``hf_sparse.load_patched(AutoModel, path)``, or fine-tune from it) and ``out_dir``/metrics.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import hf_sparse
from hf_sparse.capture import capture_attention
from hf_sparse.cli.settings import config_dict, parse_command
from hf_sparse.learned.distill import gate_examples, train_gates
from hf_sparse.patterns import make_pattern

from .recall import BlockOracle, analyze
from .sources import load_model, load_tokenizer, model_inputs


@dataclass
class GateTrainConfig:
    """Settings (YAML keys / ``--key value`` overrides, see :mod:`hf_sparse.cli.settings`)."""

    model: str = "minilm"                    # minilm | bert | gpt2 | vit (random init) | folder | hub id
    model_config: dict[str, Any] = field(default_factory=dict)
    data: str = "rotten_tomatoes"            # rotten_tomatoes (packed reviews) | random | digits
    seq_len: int = 512
    train_sequences: int = 64                # from the train part of the reviews
    eval_sequences: int = 8                  # from the held-out part
    batch_size: int = 8                      # sequences per dense forward / per training step
    steps: int = 300
    learning_rate: float = 0.01
    block_size: int = 32
    k: int = 2
    num_local_blocks: int = 1
    num_global: int = 1
    max_distance: int = 8
    layers: list[int] | None = None          # gate only these layers (null = all)
    seed: int = 0
    num_threads: int = 2
    out_dir: str = "results/gate_minilm"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, _ = parse_command(GateTrainConfig, argv, description=__doc__)
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    started = time.perf_counter()

    # 1. frozen base model with fresh gates; training and held-out inputs
    model = load_model(cfg.model, cfg.model_config)
    options = dict(block_size=cfg.block_size, k=cfg.k, num_local_blocks=cfg.num_local_blocks, num_global=cfg.num_global)
    hf_sparse.patch_model(model, "learned_gate", layers=cfg.layers, max_distance=cfg.max_distance, **options)
    train = model_inputs(model, cfg.model, cfg.data, cfg.seq_len, cfg.train_sequences, part="train", seed=cfg.seed)
    held_out = model_inputs(model, cfg.model, cfg.data, cfg.seq_len, cfg.eval_sequences, part="eval", seed=cfg.seed)

    # 2. one dense forward per batch gives the targets; then the gates train on them
    batches = [gate_examples(model, {k: v[i:i + cfg.batch_size] for k, v in train.items()})
               for i in range(0, cfg.train_sequences, cfg.batch_size)]
    prepared = time.perf_counter()
    print(f"{len(batches)} batches of dense targets from {cfg.train_sequences} sequences in {prepared - started:.0f} s")
    history = train_gates(model, batches, steps=cfg.steps, learning_rate=cfg.learning_rate,
                          log_every=max(1, cfg.steps // 10))
    trained = time.perf_counter()

    # 3. held-out recall at the gate's budget
    patterns = {"topk_blocks": make_pattern("topk_blocks", **options),
                "learned_gate": make_pattern("learned_gate", max_distance=cfg.max_distance, **options),
                "block_oracle": BlockOracle(**options)}
    table, _ = analyze(capture_attention(model, held_out), patterns, query_mask=held_out.get("attention_mask"),
                       picture_index=None)
    print(table.format())

    # 4. save the model with its gates, and the record
    checkpoint = out / "checkpoints" / "model"
    model.save_pretrained(checkpoint)
    if cfg.data == "rotten_tomatoes":
        load_tokenizer(cfg.model).save_pretrained(checkpoint)
    record = {"settings": config_dict(cfg), "checkpoint": str(checkpoint), "history": history,
              "held_out": table.summary(), "prepare_s": round(prepared - started, 1),
              "train_s": round(trained - prepared, 1), "wall_s": round(time.perf_counter() - started, 1)}
    (out / "metrics.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {checkpoint} and {out / 'metrics.json'}")
    return record


if __name__ == "__main__":
    main()
