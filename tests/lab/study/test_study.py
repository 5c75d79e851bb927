"""Sparsity studies (hf_sparse.lab.study, hf-sparse study): grid expansion and YAML round trip, one-line config
errors, a micro study run in-process (report, CSV, plots match metrics.json; failures recorded; finished runs
skipped, changed runs re-run) and one through the real accelerate subprocess path."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from hf_sparse.lab.finetune import ConfigError
from hf_sparse.lab.study import (
    Launched,
    StudyConfig,
    error_line,
    expand,
    inprocess_launcher,
    resolve,
    run_study,
    write_report,
)
from hf_sparse.lab.study import __main__ as study_script

ROOT = Path(__file__).resolve().parents[3]

TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 7}


def _micro(out: Path, **extra) -> dict:
    """Tiny image study: dense + local_2d window 1 on 32 training images (a few seconds per run in-process)."""
    data = {
        "name": "micro", "output_dir": str(out), "launcher": "python",
        "common_overrides": {"seed": 0, "train": {"epochs": 1, "max_steps": 2, "num_threads": 1,
                                                  "checkpoint_every_steps": None}},
        "task_overrides": {"image": {"model.config": TINY_VIT, "data": {
            "max_train_samples": 32, "max_eval_samples": 16, "max_test_samples": 16},
            "train": {"batch_size": 16, "eval_batch_size": 16}}},
        "entries": {
            "image-dense": {"task": "image", "config": str(ROOT / "configs/image/dense.yaml")},
            "image-local": {"task": "image", "config": str(ROOT / "configs/image/local_2d.yaml"),
                            "sweep": {"sparse.options.window": [1]}},
            "image-bad": {"task": "image", "config": str(ROOT / "configs/image/local_2d.yaml"),
                          "overrides": {"sparse.backend": "no-such-kernel"}},
            "image-missing": {"task": "image", "config": str(ROOT / "configs/image/nope.yaml")},
        },
    }
    data.update(extra)
    return data


# -- config ----------------------------------------------------------------------------------------------------


def test_expansion_order_of_overrides_and_names():
    study = StudyConfig.from_dict({
        "name": "s", "common_overrides": {"train.epochs": 2, "seed": 3},
        "task_overrides": {"sentiment": {"train": {"epochs": 4, "batch_size": 8}}},
        "entries": {"win": {"task": "sentiment", "config": "c.yaml", "overrides": {"train.batch_size": 2},
                            "sweep": {"sparse.options.window": [2, 4], "sparse": {"options": {"num_global": [0, 1]}}}},
                    "off": {"task": "sentiment", "config": "c.yaml", "enabled": False},
                    "plain": {"task": "image", "config": "d.yaml"}}})
    runs = expand(study)
    assert [r.name for r in runs] == ["win-window2-num_global0", "win-window2-num_global1", "win-window4-num_global0",
                                      "win-window4-num_global1", "plain"]
    first = runs[0].overrides
    assert first["seed"] == 3 and first["train"] == {"epochs": 4, "batch_size": 2}
    assert first["sparse"] == {"options": {"window": 2, "num_global": 0}}
    assert runs[0].sweep == {"sparse.options.window": 2, "sparse.options.num_global": 0}
    assert runs[-1].overrides == {"train": {"epochs": 2}, "seed": 3}  # no task_overrides for image


def test_yaml_round_trip_and_cli_overrides(tmp_path):
    default = StudyConfig.load(ROOT / "configs/study/short.yaml")  # the four-task grid (the default until the long study)
    assert StudyConfig.from_dict(yaml.safe_load(default.to_yaml())) == default
    runs = expand(default)
    assert {r.task for r in runs} == {"sentiment", "image", "translation", "summarization"}
    assert 16 <= len(runs) <= 20 and len({r.name for r in runs}) == len(runs)
    path = tmp_path / "s.yaml"
    path.write_text(default.to_yaml())
    changed = StudyConfig.load(path, ["--entries.sentiment-window.sweep.sparse.options.window", "[5]",
                                      "--entries.image-dense.enabled", "false", "--common_overrides.train.epochs", "3"])
    names = [r.name for r in expand(changed)]
    assert "sentiment-window-window5" in names and "sentiment-window-window1" not in names
    assert "image-dense" not in names and changed.common_overrides["train"]["epochs"] == 3
    for run in runs:  # every config that exists in this checkout resolves to a valid RunConfig
        if Path(run.config).is_file():
            assert resolve(default, run)["run_name"] == run.name


@pytest.mark.parametrize("data, words", [
    ({"entries": {"a": {"task": "image", "config": "x", "swep": {}}}}, ["entries.a.swep", "sweep"]),
    ({"timeout_s": "long"}, ["timeout_s", "int"]),
    ({"launcher": "slurm"}, ["launcher", "slurm"]),
    ({"entries": {"a": {"task": "image", "config": "x", "sweep": {"sparse.options.window": 3}}}},
     ["entries.a.sweep.sparse.options.window", "list"]),
    ({"entries": {"a": {"task": "image"}}}, ["entries.a", "config"]),
])
def test_bad_study_config_is_one_line_naming_the_key(data, words):
    with pytest.raises(ConfigError) as info:
        StudyConfig.from_dict({"name": "s", **data})
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_script_reports_bad_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "entries": {"a": {"task": "image", "config": "x"}}, "timout_s": 5}))
    assert study_script.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "timout_s" in err and "timeout_s" in err


def test_error_line_skips_accelerate_noise_and_progress_bars():
    stderr = ("train x:  50%|#####     | 1/2 [00:01<00:01]\rtrain x: 100%|##########| 2/2\n"
              "Traceback (most recent call last):\n  File \"loop.py\", line 3, in run\n"
              "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)\n"
              "Traceback (most recent call last):\n"
              "subprocess.CalledProcessError: Command '['python', 'finetune.py']' returned non-zero exit status 1.\n")
    assert error_line(stderr) == "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"
    assert error_line("noise\nfinetune: error: bad thing\nTraceback\n") == "finetune: error: bad thing"
    assert error_line("") is None
    from hf_sparse.lab.study.runner import _signal

    assert _signal(Launched(-15)) == "killed by SIGTERM"
    assert _signal(Launched(1, "subprocess.CalledProcessError: Command '[..]' died with <Signals.SIGKILL: 9>.")) == "killed by SIGKILL"
    assert _signal(Launched(-9, "timed out after 5 s (study key timeout_s)")) is None and _signal(Launched(1, "x")) is None


# -- a micro study, in-process -------------------------------------------------------------------------------------


class Counting:
    """The in-process launcher, counting the runs it launched."""

    def __init__(self):
        self.launched: list[str] = []

    def __call__(self, config_path: Path, run_dir: Path, timeout_s) -> Launched:
        self.launched.append(run_dir.name)
        return inprocess_launcher(config_path, run_dir, timeout_s)


@pytest.mark.slow
def test_micro_study_report_failures_and_skips(tmp_path):
    out = tmp_path / "study"
    study = StudyConfig.from_dict(_micro(out))
    runs = expand(study)
    launcher, lines = Counting(), []
    results = run_study(study, runs, launcher=launcher, log=lines.append)
    assert [r.status for r in results] == ["ok", "ok", "failed", "failed"]
    assert launcher.launched == ["image-dense", "image-local-window1"]  # the bad ones never reach a launcher
    assert "no-such-kernel" in results[2].error and "nope.yaml" in results[3].error
    assert any("FAILED" in line and "image-missing" in line for line in lines)

    table = write_report(study, results, wall_s=12.0)
    report = (out / "report.md").read_text()
    for name in ("image-dense", "image-local-window1", "image-bad", "image-missing"):
        assert f"| {name} |" in report
    assert "failed: " in report and "does not exist" in report
    with open(out / "report.csv") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["run"] for r in csv_rows] == [r.name for r in runs]
    for row in csv_rows[:2]:
        metrics = json.loads((out / "runs" / row["run"] / "metrics.json").read_text())
        assert row["status"] == metrics["status"] == "ok"
        assert float(row["value"]) == pytest.approx(metrics["test"]["accuracy"])
        assert float(row["train_samples_per_s"]) == pytest.approx(metrics["speed"]["train_samples_per_s"])
        assert float(row["token_density"]) == pytest.approx(metrics["sparse"]["token_density"])
        assert f"{metrics['test']['accuracy']:.4f}" in report
    dense, local = table[0], table[1]
    assert dense["train_speedup"] == 1.0
    assert local["train_speedup"] == pytest.approx(local["train_samples_per_s"] / dense["train_samples_per_s"], rel=1e-2)
    assert local["token_density"] < 1.0 and csv_rows[2]["error"]
    # 4x4 grid + [CLS] = 17 tokens: too short for a sparse kernel, and the report says so.
    assert "No sparse kernel ran at 17 tokens" in report
    for name in ("image_metric_vs_speed.png", "image_metric_vs_density.png"):
        with Image.open(out / "plots" / name) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300
        assert f"plots/{name}" in report

    # Re-running skips the finished runs; a changed grid re-runs only what changed.
    launcher = Counting()
    again = run_study(study, runs, launcher=launcher, log=lines.append)
    assert launcher.launched == [] and [r.skipped for r in again] == [True, True, False, False]
    changed = StudyConfig.from_dict(_micro(out, common_overrides={
        "seed": 0, "train": {"epochs": 1, "max_steps": 1, "num_threads": 1, "checkpoint_every_steps": None}}))
    changed.entries = {k: v for k, v in changed.entries.items() if k == "image-local"}
    assert [r.status for r in run_study(changed, expand(changed), launcher=launcher, log=lines.append)] == ["ok"]
    assert launcher.launched == ["image-local-window1"]
    assert json.loads((out / "runs/image-local-window1/metrics.json").read_text())["steps"] == 1


# -- the real subprocess path ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_study_script_through_accelerate_subprocess(tmp_path):
    """hf-sparse study end to end: one real run under accelerate launch, one that fails inside the fine-tuning."""
    data = _micro(tmp_path / "study", launcher="accelerate")
    data["entries"] = {
        "image-local": data["entries"]["image-local"],
        "image-crash": {"task": "image", "config": str(ROOT / "configs/image/dense.yaml"),
                        "overrides": {"model.name_or_path": str(tmp_path / "no-model")}},
    }
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = dict(os.environ)
    env.setdefault("HF_SPARSE_DATA", str(ROOT / "data"))
    command = [sys.executable, "-m", "hf_sparse.cli", "study", "--config", str(path)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]  # one run failed
    assert "[1/2] image-local-window1: ok" in result.stdout and "[2/2] image-crash: FAILED" in result.stdout
    assert "no-model" in result.stdout  # its error, on the progress line and in the printed table
    run_dir = tmp_path / "study/runs/image-local-window1"
    assert yaml.safe_load((run_dir / "run_config.yaml").read_text())["sparse"]["options"]["window"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "ok"
    assert (tmp_path / "study/report.md").is_file() and (tmp_path / "study/plots/image_metric_vs_speed.png").is_file()
    again = subprocess.run([*command, "--only", "image-local-*"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "skipped (finished earlier" in again.stdout


# -- prepare commands and the report's judgements, on synthetic metrics ------------------------------------------------


def _fake_launcher(values: dict[str, tuple[float, float, float, str]]):
    """Writes a metrics.json per run: (accuracy, token density, train samples/s, backend) by run name."""

    def launch(config_path: Path, run_dir: Path, timeout_s) -> Launched:
        accuracy, density, speed, backend = values[run_dir.name]
        sparse = {"pattern": "dense" if backend == "dense" else "local_2d", "token_density": density,
                  "block_density": density, "eval_length": 197,
                  "backends": {} if backend == "dense" else {"layer.0": backend, "layer.1": backend}}
        metrics = {"run_name": run_dir.name, "status": "ok", "primary_metric": "accuracy", "test": {"accuracy": accuracy},
                   "speed": {"train_samples_per_s": speed, "eval_samples_per_s": 2 * speed, "peak_memory_mb": 100.0},
                   "sparse": sparse}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return Launched(0)

    return launch


def test_prepare_runs_once_and_report_judgements(tmp_path):
    marker = tmp_path / "made"
    data = _micro(tmp_path / "study")
    local = data["entries"]["image-local"]
    local["sweep"] = {"sparse.options.window": [1, 2, 4]}
    local["prepare"] = {"command": f"python -c \"open({str(marker)!r}, 'w').write('x')\"", "creates": str(marker)}
    data["entries"] = {"image-dense": data["entries"]["image-dense"], "image-local": local,
                       "image-gated": {"task": "image", "config": str(ROOT / "configs/image/local_2d.yaml"),
                                       "prepare": {"command": "python -c \"raise SystemExit('no gates here')\"",
                                                   "creates": str(tmp_path / "never")}}}
    study = StudyConfig.from_dict(data)
    values = {"image-dense": (0.80, 1.0, 100.0, "dense"), "image-local-window1": (0.70, 0.05, 150.0, "blocksparse"),
              "image-local-window2": (0.795, 0.12, 130.0, "blocksparse"), "image-local-window4": (0.81, 0.4, 105.0, "masked_sdpa")}
    lines: list[str] = []
    results = run_study(study, expand(study), launcher=_fake_launcher(values), log=lines.append)
    assert marker.read_text() == "x" and sum(line.startswith("prepare:") for line in lines) == 2
    assert [r.status for r in results] == ["ok", "ok", "ok", "ok", "failed"]
    assert results[-1].error == "prepare command failed: no gates here"
    table = write_report(study, results, wall_s=1.0)
    assert [r["pareto"] for r in table[:4]] == [False, True, True, True]  # dense is beaten by window4 in both
    report = (tmp_path / "study/report.md").read_text()
    assert "A sparse kernel (blocksparse) ran at 197 tokens in 2 of 3 sparse runs" in report
    assert "image-local-window4 used masked_sdpa only" in report
    assert "image-local: too sparse from window=1 (token density 0.050" in report
    assert "| 1.50x |" in report and "| (1.05x) |" in report  # window1 (blocksparse); window4 (masked_sdpa only)


def test_prepare_runs_what_it_needs_first_and_only_when_missing(tmp_path):
    """A prepare step's ``needs`` step (e.g. stage 0a, whose model stage 0b starts from) runs before it, once, with
    "{study_dir}" filled in at every level and "{needs}" in the command naming what the needs step creates; nothing
    runs when the last step's path exists; a failing ``needs`` fails the runs with its own error; a ``needs``
    without ``creates``, or "{needs}" without a ``needs`` step, is a one-line ConfigError."""
    data = _micro(tmp_path / "study")
    local = data["entries"]["image-local"]
    local["sweep"] = {"sparse.options.window": [1, 2]}
    write = "python -c \"import os; assert os.path.exists({read!r}); open({made!r}, 'w').write('x')\""
    first = tmp_path / "study/a"
    local["prepare"] = {"command": write.format(read=str(tmp_path), made="{study_dir}/b"), "creates": "{study_dir}/b",
                        "needs": {"command": write.format(read=str(tmp_path), made="{study_dir}/a"),
                                  "creates": "{study_dir}/a"}}
    local["prepare"]["command"] = write.format(read="{needs}", made="{study_dir}/b")  # it asserts `first` exists
    data["entries"] = {"image-local": local}
    study = StudyConfig.from_dict(data)
    assert expand(study)[0].prepare.needs.creates == str(first)
    values = {"image-local-window1": (0.7, 0.05, 150.0, "blocksparse"), "image-local-window2": (0.7, 0.1, 140.0, "blocksparse")}
    lines: list[str] = []
    results = run_study(study, expand(study), launcher=_fake_launcher(values), log=lines.append)
    assert [r.status for r in results] == ["ok", "ok"]
    assert [line.split(" (makes ")[1] for line in lines if line.startswith("prepare:")] == [f"{first})", f"{first.parent / 'b'})"]
    assert f"os.path.exists({str(first)!r})" in [line for line in lines if line.startswith("prepare:")][1]
    first.unlink()  # the last step's path exists: its needs is not rebuilt
    lines.clear()
    run_study(study, expand(study), launcher=_fake_launcher(values), log=lines.append)
    assert not any(line.startswith("prepare:") for line in lines) and not first.exists()
    data = {**_micro(tmp_path / "other"), "entries": data["entries"]}  # a fresh folder: nothing is finished there
    local["prepare"]["needs"] = {"command": "python -c \"raise SystemExit('no synopsis model')\"", "creates": "{study_dir}/c"}
    study = StudyConfig.from_dict(data)
    results = run_study(study, expand(study), launcher=_fake_launcher(values), log=lines.append)
    assert [r.error for r in results] == ["prepare command failed: no synopsis model"] * 2
    local["prepare"]["needs"] = {"command": "python -c pass"}
    with pytest.raises(ConfigError, match=r"study key 'entries.image-local.prepare.needs' needs both 'command' and"):
        StudyConfig.from_dict(data)
    local["prepare"].pop("needs")
    with pytest.raises(ConfigError, match=r"'entries.image-local.prepare.command' uses \{needs\} but the step has no"):
        StudyConfig.from_dict(data)


def test_too_sparse_when_every_setting_falls_below_dense():
    from hf_sparse.lab.study.report import too_sparse

    def row(entry, sweep, density, value):
        return {"entry": entry, "sweep": sweep, "token_density": density, "value": value, "metric": "accuracy",
                "status": "ok", "pattern": "dense" if not sweep else "x", "test_size": 300}

    table = [row("d", "", 1.0, 0.71), row("w", "window=8", 0.48, 0.67), row("w", "window=1", 0.15, 0.64)]
    lines = too_sparse(table, 0.01)
    assert lines[0].startswith("w: every setting falls more than 1% below dense, the densest too (window=8")
    assert lines[1] == "for scale: one standard error of the dense accuracy on 300 test examples is ±0.026"
    mixed = [row("d", "", 1.0, 0.32), row("w", "window=4", 0.3, 0.31), row("w", "window=1", 0.05, 0.33)]
    assert too_sparse(mixed, 0.01)[0] == ("w: no clear point: window=4 fall more than 1% below dense but the sparser "
                                          "window=1 do not (noise at this budget)")


def test_study_dir_placeholder_names_the_study_folder(tmp_path):
    """"{study_dir}" in an entry's prepare and overrides becomes the study's folder, so a study can train what its
    runs start from inside itself; other strings are left alone."""
    data = _micro(tmp_path / "study")
    local = data["entries"]["image-local"]
    local["prepare"] = {"command": "python make.py --out {study_dir}/stage0", "creates": "{study_dir}/stage0/model"}
    local["overrides"] = {"model.name_or_path": "{study_dir}/stage0/model", "run_name": "keep {this}"}
    study = StudyConfig.from_dict(data)
    run = next(r for r in expand(study) if r.entry == "image-local")
    root = str(tmp_path / "study")
    assert run.prepare.command == f"python make.py --out {root}/stage0"
    assert run.prepare.creates == f"{root}/stage0/model"
    assert run.overrides["model"]["name_or_path"] == f"{root}/stage0/model"
    assert run.overrides["run_name"] == "keep {this}"
    assert study.entries["image-local"].prepare.creates == "{study_dir}/stage0/model"  # the config itself is unchanged


def test_prepared_placeholder_names_what_the_runs_prepare_step_creates(tmp_path):
    """"{prepared}" in a task's or an entry's overrides becomes the path the run's prepare step creates (with
    "{study_dir}" filled in), per run; an entry without a prepare step that uses it is a one-line ConfigError."""
    data = _micro(tmp_path / "study")
    local = data["entries"]["image-local"]
    local["prepare"] = {"command": "python make.py", "creates": "{study_dir}/stage0/model"}
    data["task_overrides"] = {"image": {"model": {"name_or_path": "{prepared}"}}}
    study = StudyConfig.from_dict(data)
    with pytest.raises(ConfigError, match=r"^study run 'image-dense' uses \{prepared\} in an override but its entry "
                                          r"has no 'prepare'"):
        expand(study)
    data["entries"] = {"image-local": local}
    study = StudyConfig.from_dict(data)
    runs = expand(study)
    assert runs and {run.overrides["model"]["name_or_path"] for run in runs} == {f"{tmp_path / 'study'}/stage0/model"}
    assert study.task_overrides["image"]["model"]["name_or_path"] == "{prepared}"  # the config itself is unchanged


def test_reference_matches_runs_that_start_from_their_own_study_folder(tmp_path):
    """A run whose model is trained inside its study ("{study_dir}/stage0/...") has the same config as the
    reference study's run of the same settings, although the two folders differ; another setting still differs."""
    import json

    from hf_sparse.lab.study import resolve
    from hf_sparse.lab.study.runner import RUN_CONFIG, reference_metrics

    def study_in(folder, reference, lr):
        data = _micro(tmp_path / folder, reference_dir=str(tmp_path / reference))
        data["entries"] = {"image-local": data["entries"]["image-local"]}
        data["entries"]["image-local"]["overrides"] = {"model.name_or_path": "{study_dir}/stage0/model",
                                                       "train.learning_rate": lr}
        return StudyConfig.from_dict(data)

    then = study_in("ref", "none", 1e-3)
    for run in expand(then):  # the reference: a finished run written where that study put it
        run_dir = then.root / "runs" / run.name
        run_dir.mkdir(parents=True)
        (run_dir / RUN_CONFIG).write_text(yaml.safe_dump(resolve(then, run)))
        (run_dir / "metrics.json").write_text(json.dumps({"status": "ok", "test": {"accuracy": 0.5}}))
    same, other = study_in("new", "ref", 1e-3), study_in("new2", "ref", 2e-3)
    assert set(reference_metrics(same, expand(same))["image-local-window1"]) == {"metrics"}
    assert reference_metrics(other, expand(other))["image-local-window1"] == {"differs": "config differs in train"}


def test_speedups_divide_by_dense_runs_on_the_same_documents():
    """A dense speed row measured on fewer documents (slow, e.g. attention dropout 0.1) is never the baseline of runs
    on the full set, in train or in eval; the note compares it with the baseline instead."""
    from hf_sparse.lab.study.grid import PlannedRun
    from hf_sparse.lab.study.report import baseline_note, rows
    from hf_sparse.lab.study.runner import RunResult

    def result(name, role, train, test, train_speed, eval_speed):
        metrics = {"status": "ok", "primary_metric": "accuracy", "test": {"accuracy": 0.8},
                   "data": {"train": train, "test": test},
                   "speed": {"train_samples_per_s": train_speed, "eval_samples_per_s": eval_speed}}
        return RunResult(PlannedRun(name, name, "sentiment", "x.yaml", {}, {}, role=role), "ok", metrics=metrics)

    table = rows([result("nodrop", "dense", 48, 160, 0.3, 0.8), result("drop", "dense", 16, 48, 0.06, 1.0),
                  result("cut", "dense_truncated", 48, 160, 1.5, 8.0), result("window", "sparse", 48, 160, 0.45, 1.2)])
    nodrop, drop, cut, window = table
    assert (window["train_speedup"], window["eval_speedup"]) == (1.5, 1.5)  # not 1.2 (drop's faster eval)
    assert (nodrop["train_speedup"], nodrop["eval_speedup"]) == (1.0, 1.0)
    assert (drop["train_speedup"], drop["eval_speedup"]) == (1.0, 1.0)     # its own baseline
    assert drop["train_speedup_vs_truncated"] is None and window["eval_speedup_vs_truncated"] == 0.15
    note = baseline_note(table)
    assert "train: nodrop (0.3/s on 48 documents); eval: nodrop (0.8/s on 160 documents)" in note
    assert "drop measured train speed on 16 other documents: 0.20x nodrop's samples/s" in note
    assert "drop measured eval speed on 48 other documents: 1.25x nodrop's samples/s" in note
