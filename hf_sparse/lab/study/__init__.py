"""Sparsity studies: a grid of fine-tuning runs (task x pattern x sparsity level) from one YAML, each run a
``hf-sparse finetune`` (``python -m hf_sparse.lab.finetune``) subprocess, summed up in ``report.md``, ``report.csv`` and plots.

    hf-sparse study --config configs/study/default.yaml [--common_overrides.train.epochs 2 ...]
"""

from __future__ import annotations

import os
import platform

from ..finetune.scores import BOOTSTRAP_SAMPLES
from .grid import EntryConfig, PlannedRun, PrepareConfig, StudyConfig, expand, flatten, resolve
from .plots import write_plots
from .report import console, markdown, rows, write_csv
from .runner import (
    Launched,
    RunResult,
    collect,
    error_line,
    inprocess_launcher,
    reference_metrics,
    run_study,
    subprocess_launcher,
)

__all__ = [
    "EntryConfig", "Launched", "collect", "PlannedRun", "PrepareConfig", "RunResult", "StudyConfig", "console", "error_line",
    "expand", "inprocess_launcher", "reference_metrics", "resolve", "rows", "run_study", "subprocess_launcher", "write_report",
]


def write_report(study: StudyConfig, results: list[RunResult], wall_s: float) -> list[dict]:
    """``report.csv``, ``plots/*.png`` and ``report.md`` in the study folder; returns the table rows."""
    root = study.root
    root.mkdir(parents=True, exist_ok=True)
    reference = reference_metrics(study, [r.run for r in results])
    table = rows(results, reference)
    write_csv(table, root / "report.csv")
    plots = write_plots(table, root / "plots")
    done = sum(r.status == "ok" for r in results)
    cached = sum(r.skipped for r in results)
    budget = ", ".join(f"{k}={v}" for k, v in flatten(study.common_overrides).items()) or "as in each config"
    preamble = [
        f"{len(results)} runs ({done} ok, {len(results) - done} failed, {cached} reused from an earlier run) on "
        f"{platform.machine()} ({_cpus()} CPUs): the run processes took {sum(r.wall_s for r in results) / 60:.1f} min "
        f"launch to exit (reused runs included); this invocation of the study took {wall_s / 60:.1f} min.",
        "",
        f"Shared budget and settings: {budget}. Metrics are on the test split; throughput is samples/s of the "
        "training loop and of the test evaluation; speed-ups divide by runs of this study only (the faster "
        "full-length dense run of the task, and its truncated dense run); ± is one standard error: of an accuracy "
        "sqrt(p(1-p)/n) on the n test examples, of ROUGE the per-document scores' SD / sqrt(n), of BLEU / chrF "
        f"the SD over {BOOTSTRAP_SAMPLES} bootstrap resamples of the test documents; peak MB is the peak resident "
        "memory (ru_maxrss) of the training process on CPU, model, data and all (CUDA max allocated on GPU). "
        "Config of each run: "
        "`runs/<run>/run_config.yaml`.",
        "", _reference_line(study, reference),
    ]
    loads = [r.load_avg for r in results if r.load_avg is not None]
    if loads:
        busy = max(loads) > _cpus() + 0.5
        preamble += ["", f"1-minute load average as the runs ended: {min(loads):.1f}-{max(loads):.1f} on {_cpus()} CPUs"
                     + ("; the machine was shared with other jobs, so the speed columns carry their noise." if busy else ".")]
    (root / "report.md").write_text(markdown(table, f"Study {study.name}", preamble, study.tolerance, plots))
    return table


def _reference_line(study: StudyConfig, reference: dict[str, dict]) -> str:
    compared = [name for name, ref in reference.items() if "metrics" in ref]
    if not reference:
        return (f"Reference: none (no finished runs of the same names under `{study.reference}`); commit a finished "
                "study there to compare against it.")
    line = (f"Reference: `{study.reference}`, the committed results; {len(compared)} run(s) with the same config "
            "show its metric and the difference (this run minus the reference)")
    differs = [f"{name} ({ref['differs']})" for name, ref in reference.items() if "differs" in ref]
    return line + (f"; not compared: {'; '.join(differs)}." if differs else ".")


def _cpus() -> int:
    return os.cpu_count() or 1

