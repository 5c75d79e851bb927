"""The ``hf-sparse`` command: one subcommand per job of the lab and the benchmarks.

    hf-sparse study --config configs/study/default.yaml
    hf-sparse finetune --config configs/sentiment/sliding_window.yaml --train.epochs 1
    hf-sparse bench-model --config configs/bench/bert_long.yaml --repeats 5 --lengths "[4096, 8192]"
    hf-sparse <command> --help

Every command takes its settings the same way (:mod:`hf_sparse.cli.settings`): ``--config FILE.yaml``, then
``--key value`` / ``--nested.key value`` overrides, values parsed as YAML.

Each subcommand is the ``main(argv)`` of one module, imported only when that subcommand runs, so the
command starts fast and ``import hf_sparse`` never loads the lab or the benchmarks.
"""

from __future__ import annotations

import importlib
import sys

from .settings import ConfigError

# subcommand -> (module with a ``main(argv)``, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "study": ("hf_sparse.lab.study.__main__", "run a sparsity study: fine-tuning runs, then report.md/csv + plots"),
    "finetune": ("hf_sparse.lab.finetune.__main__", "fine-tune one (sparse-patched) model on one task"),
    "prepare-data": ("hf_sparse.lab.data.__main__", "fetch and cache the offline data sets"),
    "analyze": ("hf_sparse.lab.analysis.__main__", "attention-mass recall of patterns on real inputs, + pictures"),
    "train-gate": ("hf_sparse.lab.analysis.train_gate", "train learned_gate gates by distillation"),
    "draw-patterns": ("hf_sparse.lab.draw_patterns", "draw every built-in pattern to PNGs"),
    "bench-model": ("hf_sparse.bench.model", "whole-model speed and memory, dense vs sparse"),
    "bench-kernels": ("hf_sparse.bench.kernels", "attention kernels against dense SDPA"),
    "bench-generate": ("hf_sparse.bench.generate", "generation speed and KV-cache size, dense vs window cache"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "usage: hf-sparse <command> [options]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"hf-sparse: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"hf-sparse {name}", *rest]  # so argparse's usage lines name the subcommand
    try:
        result = module.main(rest)
    except ConfigError as exc:  # bad settings: the one-line message, no traceback
        print(f"hf-sparse {name}: error: {exc}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
