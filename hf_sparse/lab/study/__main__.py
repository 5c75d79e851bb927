"""Run a sparsity study: a grid of fine-tuning runs (task x pattern x sparsity level) with one budget and
seed, then report.md, report.csv and plots/*.png in a fresh folder results/<study>-<timestamp>/.

    hf-sparse study --config configs/study/default.yaml
    hf-sparse study --config configs/study/default.yaml --only 'sentiment-*' --common_overrides.train.epochs 2
    hf-sparse study --config configs/study/default.yaml --output_dir results/study-default-20250101-120000  # resume

Every study setting can be overridden with a dotted flag (--timeout_s 600, --entries.image-local-2d.enabled false,
--entries.sentiment-window.sweep.sparse.options.window "[2, 4]"). Each run is a ``python -m hf_sparse.lab.finetune`` subprocess
(under accelerate launch); a failed run is reported with its error and the study goes on. Re-running with the
same --output_dir skips runs that finished with the same resolved config (resuming a killed study); without it
nothing is reused. The report compares metrics with the committed reference study (reference_dir). Exit status:
0 if every run is ok, 1 if any failed, 2 for a bad study config.
"""

from __future__ import annotations

import fnmatch
import sys
import time

from hf_sparse.cli.settings import command_parser, parse_command

from ..finetune import ConfigError
from . import StudyConfig, collect, console, expand, resolve, run_study, write_report


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__, config_required=True)
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="run and report only the runs whose name matches (repeatable)")
    parser.add_argument("--list", action="store_true",
                        help="print the planned runs, each resolved and validated, and exit (2 if one is invalid)")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs; run nothing")

    # 1. The study config and its runs.
    try:
        study, args = parse_command(StudyConfig, argv, parser)
        runs = expand(study)
    except ConfigError as exc:
        print(f"study: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.only:
        runs = [r for r in runs if any(fnmatch.fnmatch(r.name, pattern) for pattern in args.only)]
    if args.report_only and study.output_dir is None:
        print("study: error: --report-only needs --output_dir FOLDER, the study folder to rebuild the report of",
              file=sys.stderr)
        return 2
    if args.list:
        return list_runs(study, runs)
    print(f"study {study.name}: {len(runs)} runs -> {study.root}")

    # 2. Run them (skipping finished ones); a failed run is recorded and the study goes on.
    start = time.perf_counter()
    if args.report_only:
        results = collect(study, runs)
    else:
        results = run_study(study, runs)
    wall = time.perf_counter() - start

    # 3. The report: table per task, CSV, plots; the same table on the console.
    table = write_report(study, results, wall)
    print()
    print(console(table))
    failed = sum(r.status != "ok" for r in results)
    print(f"\n{len(results) - failed} ok, {failed} failed in {wall / 60:.1f} min -> {study.root / 'report.md'}, "
          f"{study.root / 'report.csv'}, {study.root / 'plots'}")
    return 1 if failed else 0


def list_runs(study: StudyConfig, runs: list) -> int:
    """Print each planned run (role, task, config, sweep values) after resolving it; 2 if any is invalid."""
    bad = 0
    for run in runs:
        try:
            resolve(study, run)
            problem = ""
        except ConfigError as exc:
            bad += 1
            problem = f"  INVALID: {' '.join(str(exc).split())}"
        print(f"{run.name}: {run.role or 'role from pattern'}, {run.task}, {run.config} {run.sweep or ''}{problem}")
    print(f"{len(runs)} runs, {bad} invalid")
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
