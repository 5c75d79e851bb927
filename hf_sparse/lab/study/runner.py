"""Running a study's runs: one ``hf-sparse finetune`` (``python -m hf_sparse.lab.finetune``) subprocess per run (a crash stays contained), the
skip logic for finished runs, ``prepare`` commands, and the one-line error of a failed run.

Each run lives in ``<study root>/runs/<run>/``: ``run_config.yaml`` (the resolved config it ran with, which
is also the ``--config`` given to the fine-tuning), ``metrics.json``, ``launch.json`` (process wall time),
``stdout.log`` and ``stderr.log``. A run
is skipped when its metrics.json says ``status: ok`` and its run_config.yaml equals the config the study
resolves now; otherwise its folder is cleared and it runs again.

A run that fails (an exception, out of memory, killed by the OOM killer, past the study's ``timeout_s``) gets a
``metrics.json`` with ``status: failed`` and the one-line reason, and the study goes on with the next run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..finetune.config import ConfigError
from ..finetune.record import write_failed
from .grid import PlannedRun, PrepareConfig, StudyConfig, resolve, unfill_study_dir

FINETUNE_MODULE = "hf_sparse.lab.finetune"  # run as ``python -m`` / ``accelerate launch -m``
RUN_CONFIG = "run_config.yaml"
LAUNCH_FILE = "launch.json"  # wall time of the run's process, launch to exit (kept for reused runs)


@dataclass
class Launched:
    """What a launcher reports: the exit status and the tail of the run's stderr."""

    returncode: int
    stderr: str = ""


#: ``launcher(run_config_path, run_dir, timeout_s) -> Launched``; it must leave ``run_dir/metrics.json``.
Launcher = Callable[[Path, Path, "int | None"], Launched]


@dataclass
class RunResult:
    """The outcome of one planned run (``metrics`` is its metrics.json, when there is one)."""

    run: PlannedRun
    status: str  # "ok" | "failed"
    error: str | None = None
    skipped: bool = False
    wall_s: float = 0.0
    metrics: dict[str, Any] | None = None
    load_avg: float | None = None  # the machine's 1-minute load average when the run ended


# -- launchers ----------------------------------------------------------------------------------------------------


def subprocess_launcher(study: StudyConfig) -> Launcher:
    """Runs ``hf-sparse finetune`` (``python -m hf_sparse.lab.finetune``) under ``accelerate launch --config_file <accelerate_config>`` (or plain
    python), in its own process group so a timeout kills the whole tree; logs go to the run folder."""

    def launch(config_path: Path, run_dir: Path, timeout_s: int | None) -> Launched:
        if study.launcher == "accelerate":
            prefix = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", study.accelerate_config]
            threads = _threads(config_path)
            if threads:
                prefix += ["--num_cpu_threads_per_process", str(threads)]
        else:
            prefix = [sys.executable]
        command = [*prefix, "-m", FINETUNE_MODULE, "--config", str(config_path)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        with open(run_dir / "stdout.log", "w") as out, open(run_dir / "stderr.log", "w") as err:
            process = subprocess.Popen(command, stdout=out, stderr=err, env=env, start_new_session=True)
            try:
                returncode = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return Launched(-9, f"timed out after {timeout_s} s (study key timeout_s)")
        return Launched(returncode, (run_dir / "stderr.log").read_text(errors="replace")[-20000:])

    return launch


def inprocess_launcher(config_path: Path, run_dir: Path, timeout_s: int | None) -> Launched:
    """Runs the fine-tuning in this process (fast, for tests); an exception becomes a failed run."""
    from ..finetune import RunConfig, run

    cfg = None
    try:
        cfg = RunConfig.load(config_path)
        run(cfg)
    except Exception as exc:  # a failed run must not stop the study
        message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        if cfg is not None:
            write_failed(cfg.run_dir, cfg.run_name, message)
        return Launched(1, message)
    return Launched(0)


def _threads(config_path: Path) -> int | None:
    data = yaml.safe_load(config_path.read_text()) or {}
    return (data.get("train") or {}).get("num_threads")


# -- the study loop ---------------------------------------------------------------------------------------------


def run_study(
    study: StudyConfig,
    runs: list[PlannedRun],
    launcher: Launcher | None = None,
    log: Callable[[str], None] = print,
    keep_checkpoints: bool = False,
) -> list[RunResult]:
    """Run (or skip) every planned run in order; a failure is recorded and the study goes on."""
    launcher = launcher or subprocess_launcher(study)
    prepared: dict[str, str | None] = {}  # entry -> error of its prepare command (None: fine)
    results = []
    start = time.perf_counter()
    for index, run in enumerate(runs, 1):
        head = f"[{index}/{len(runs)}] {run.name}"
        result = _one(study, run, launcher, prepared, log, head, keep_checkpoints)
        results.append(result)
        elapsed = f"(study {(time.perf_counter() - start) / 60:.1f} min)"
        if result.skipped:
            log(f"{head}: skipped (finished earlier with the same config) {summary(result)}")
        elif result.status == "ok":
            log(f"{head}: ok in {result.wall_s:.0f} s {elapsed} {summary(result)}")
        else:
            log(f"{head}: FAILED after {result.wall_s:.0f} s {elapsed}: {result.error}")
    return results


def _one(study: StudyConfig, run: PlannedRun, launcher: Launcher, prepared: dict[str, str | None],
         log: Callable[[str], None], head: str, keep_checkpoints: bool) -> RunResult:
    run_dir = study.root / "runs" / run.name
    try:
        resolved = resolve(study, run)
    except ConfigError as exc:
        return _failed(run, run_dir, str(exc), 0.0)
    if finished(run_dir, resolved):
        return RunResult(run, "ok", skipped=True, wall_s=_launch_wall(run_dir), metrics=read_metrics(run_dir),
                         load_avg=_launch_load(run_dir))
    if run.prepare is not None:
        if run.entry not in prepared:
            prepared[run.entry] = prepare(run.prepare, study.root / "prepare" / run.entry, log, study.timeout_s)
        if prepared[run.entry] is not None:
            return _failed(run, run_dir, f"prepare command failed: {prepared[run.entry]}", 0.0)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config_path = run_dir / RUN_CONFIG
    config_path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    log(f"{head}: running ({run.task}, {run.config}{_describe(run.sweep)})")
    tick = time.perf_counter()
    launched = launcher(config_path, run_dir, study.timeout_s)
    wall = time.perf_counter() - tick
    load = round(os.getloadavg()[0], 2)
    (run_dir / LAUNCH_FILE).write_text(
        json.dumps({"wall_s": round(wall, 2), "returncode": launched.returncode, "load_avg_1min": load}) + "\n")
    metrics = read_metrics(run_dir)
    if launched.returncode == 0 and metrics is not None and metrics.get("status") == "ok":
        if not keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        return RunResult(run, "ok", wall_s=wall, metrics=metrics, load_avg=load)
    error = (metrics or {}).get("error") or _killed(launched) or error_line(launched.stderr)
    if launched.returncode == 0 and not error:
        error = "the fine-tuning exited 0 but wrote no metrics.json with status ok"
    return _failed(run, run_dir, error or f"exit status {launched.returncode}", wall)


def _signal(launched: Launched) -> str | None:
    """"killed by SIGxxx" when the run (or accelerate's child) died of a signal, else ``None``."""
    if launched.returncode < 0 and not launched.stderr.startswith("timed out"):
        return f"killed by {signal.Signals(-launched.returncode).name}"
    found = re.search(r"died with <Signals\.(SIG\w+)", launched.stderr)
    return f"killed by {found.group(1)}" if found else None


def _killed(launched: Launched) -> str | None:
    """:func:`_signal`, saying that an unasked-for SIGKILL is most often the kernel's out-of-memory killer (the
    study's own timeout kill says "timed out" instead)."""
    reason = _signal(launched)
    return f"{reason} (likely out of memory: the kernel's OOM killer)" if reason == "killed by SIGKILL" else reason


def _failed(run: PlannedRun, run_dir: Path, error: str, wall: float) -> RunResult:
    error = " ".join(error.split())
    run_dir.mkdir(parents=True, exist_ok=True)
    write_failed(run_dir, run.name, error)
    return RunResult(run, "failed", error=error, wall_s=wall, metrics=read_metrics(run_dir))


def prepare(step: PrepareConfig, log_dir: Path, log: Callable[[str], None], timeout_s: int | None) -> str | None:
    """Run ``step.command`` unless ``step.creates`` exists, after its ``needs`` step (same rule, logs in
    ``log_dir/needs``); ``None`` on success, else the error line."""
    if Path(step.creates).exists():
        return None
    if step.needs is not None:
        error = prepare(step.needs, log_dir / "needs", log, timeout_s)
        if error is not None:
            return error
    command = step.resolved_command()
    words = shlex.split(command)
    if words and words[0] == "python":
        words[0] = sys.executable
    elif words and words[0] == "hf-sparse":  # the console script of this interpreter's install
        words[:1] = [sys.executable, "-m", "hf_sparse.cli"]
    log(f"prepare: {command} (makes {step.creates})")
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    try:
        with open(log_dir / "stdout.log", "w") as out, open(log_dir / "stderr.log", "w") as err:
            code = subprocess.run(words, stdout=out, stderr=err, env=env, timeout=timeout_s).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        return " ".join(str(exc).split())
    if code != 0:
        return error_line((log_dir / "stderr.log").read_text(errors="replace")) or f"exit status {code}"
    if not Path(step.creates).exists():
        return f"it exited 0 but did not create {step.creates}"
    return None


def collect(study: StudyConfig, runs: list[PlannedRun]) -> list[RunResult]:
    """The results already on disk (nothing is run): a run without an ok metrics.json shows as failed."""
    results = []
    for run in runs:
        metrics = read_metrics(study.root / "runs" / run.name)
        if metrics is not None and metrics.get("status") == "ok":
            run_dir = study.root / "runs" / run.name
            results.append(RunResult(run, "ok", skipped=True, wall_s=_launch_wall(run_dir), metrics=metrics,
                                     load_avg=_launch_load(run_dir)))
        else:
            error = (metrics or {}).get("error") or "not run yet"
            results.append(RunResult(run, "failed", error=error, metrics=metrics))
    return results


# -- reading results -----------------------------------------------------------------------------------------------


def finished(run_dir: Path, resolved: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds an ok metrics.json made with exactly the config ``resolved`` (apart from
    :data:`PLACE_KEYS`: the same folder given as a relative or an absolute path is the same study)."""
    metrics = read_metrics(run_dir)
    config_path = run_dir / RUN_CONFIG
    if metrics is None or metrics.get("status") != "ok" or not config_path.is_file():
        return False
    return _what(yaml.safe_load(config_path.read_text()) or {}) == _what(resolved)


def _what(config: dict[str, Any]) -> dict[str, Any]:
    """A run config without the keys that only say where it was written, and with paths inside its study's folder
    (the parent of its ``output_dir``, ``<study>/runs``) written from ``{study_dir}``: a stage-0 model trained
    inside each study is the same setting in every study."""
    what = {k: v for k, v in config.items() if k not in PLACE_KEYS}
    out = config.get("output_dir")
    return unfill_study_dir(what, str(Path(out).parent)) if isinstance(out, str) and out else what


def _launch_wall(run_dir: Path) -> float:
    try:
        return float(json.loads((run_dir / LAUNCH_FILE).read_text())["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _launch_load(run_dir: Path) -> float | None:
    try:
        return float(json.loads((run_dir / LAUNCH_FILE).read_text())["load_avg_1min"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: Run-config keys that name where a run was written, not what it ran: ignored when matching a reference run.
PLACE_KEYS = ("output_dir",)


def reference_metrics(study: StudyConfig, runs: list[PlannedRun]) -> dict[str, dict[str, Any]]:
    """Per run name, what the committed reference study (``study.reference``) says about the same run:
    ``{"metrics": <its ok metrics.json>}`` when its run_config.yaml equals the config resolved now (apart from
    :data:`PLACE_KEYS`), else ``{"differs": <why>}``; runs the reference does not have are left out."""
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        ref_dir = study.reference / "runs" / run.name
        metrics = read_metrics(ref_dir)
        if metrics is None:
            continue
        try:
            now = resolve(study, run)
            then = yaml.safe_load((ref_dir / RUN_CONFIG).read_text()) or {}
        except (ConfigError, OSError, yaml.YAMLError) as exc:
            out[run.name] = {"differs": " ".join(str(exc).split())}
            continue
        now, then = _what(now), _what(then)
        changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
        if metrics.get("status") != "ok":
            out[run.name] = {"differs": "the reference run failed"}
        elif changed:
            out[run.name] = {"differs": f"config differs in {', '.join(changed)}"}
        else:
            out[run.name] = {"metrics": metrics}
    return out


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


_NOISE = ("subprocess.CalledProcessError", "Traceback", "raise ", "File \"", "^", "~")


def error_line(stderr: str) -> str | None:
    """The line of ``stderr`` that says what went wrong: the fine-tuning's own ``finetune: error:`` line, else the last
    exception line (not accelerate's ``CalledProcessError`` about its child), else the last line."""
    lines = [line.strip() for chunk in stderr.splitlines() for line in chunk.split("\r")]
    lines = [line for line in lines if line and "%|" not in line]
    for line in reversed(lines):
        if line.startswith("finetune:"):
            return line
    for line in reversed(lines):
        first = line.split(":", 1)[0]
        if (first.endswith(("Error", "Exception", "Interrupt", "Exit")) and " " not in first
                and not line.startswith(_NOISE)):
            return line
    return lines[-1] if lines else None


def summary(result: RunResult) -> str:
    m = result.metrics or {}
    if m.get("status") != "ok":
        return ""
    primary = m.get("primary_metric")
    value = (m.get("test") or {}).get(primary)
    speed = m.get("speed") or {}
    parts = [f"{primary} {value:.4f}" if isinstance(value, (int, float)) else "",
             f"train {speed.get('train_samples_per_s') or 0:.1f}/s", f"eval {speed.get('eval_samples_per_s') or 0:.1f}/s"]
    return "| " + ", ".join(p for p in parts if p)


def _describe(sweep: dict[str, Any]) -> str:
    return "".join(f", {k}={v}" for k, v in sweep.items())
