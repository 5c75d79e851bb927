"""Fine-tune a (sparse-patched) model on one task and write <output_dir>/<run_name>/metrics.json.

    accelerate launch -m hf_sparse.lab.finetune --config configs/sentiment/sliding_window.yaml [--train.epochs 1 ...]
    hf-sparse finetune --config configs/image/local_2d.yaml --resume

Any config key can be overridden with a dotted flag (--sparse.options.window 8, --sparse null, ...).
--resume continues from the run's last checkpoint. Bad configs stop at once with a one-line error
(exit status 2) and, when the run name is known, a metrics.json with status "failed".
"""

from __future__ import annotations

import os
import sys

from hf_sparse.cli.settings import command_parser, parse_command

from ..data import DataSourceError
from . import ConfigError, Interrupted, RunConfig, run
from .record import write_failed


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__, config_required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this run")
    parser.add_argument("--interrupt-after-steps", type=int, default=None,
                        help="testing: stop abruptly after this many optimizer steps, as a crash would")

    cfg = None
    try:
        cfg, args = parse_command(RunConfig, argv, parser)
        metrics = run(cfg, resume=args.resume, interrupt_after_steps=args.interrupt_after_steps)
    except Interrupted as exc:
        print(f"finetune: {exc}", file=sys.stderr)
        return 3
    except (ConfigError, DataSourceError, ValueError, TypeError) as exc:
        message = " ".join(str(exc).split())
        print(f"finetune: error: {message}", file=sys.stderr)
        if cfg is not None:
            write_failed(cfg.run_dir, cfg.run_name, message)
        return 2

    if int(os.environ.get("RANK", "0")) != 0:  # one summary line per run, from the main process
        return 0
    test = ", ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items())
    speed = metrics["speed"]
    print(f"{cfg.run_name}: test {test} | train {speed['train_samples_per_s']:.1f} samples/s, "
          f"eval {speed['eval_samples_per_s']:.1f} samples/s | {metrics['sparse']['pattern']} "
          f"(token density {metrics['sparse']['token_density']:.3f}) -> {cfg.run_dir / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
