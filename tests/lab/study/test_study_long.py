"""The long-input study's machinery (hf_sparse.lab.study): a fresh output folder per study and the committed
reference left untouched, roles and the speed-up columns (faster dense row, truncated row), the standard error
column, failed runs (timeout, MemoryError, SIGKILL) recorded with their reason while the study goes on, and the
default and quick study configs expanding and validating through ``hf-sparse study --list``."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import yaml

from hf_sparse.lab.finetune import ConfigError
from hf_sparse.lab.study import Launched, StudyConfig, collect, expand, run_study, runner, write_report
from hf_sparse.lab.study import __main__ as study_script
from hf_sparse.lab.study.grid import fresh_folder

ROOT = Path(__file__).resolve().parents[3]
DENSE, WINDOW = str(ROOT / "configs/sentiment_long/dense.yaml"), str(ROOT / "configs/sentiment_long/sliding_window.yaml")
TRUNCATED = str(ROOT / "configs/sentiment_long/dense_512.yaml")
IMAGE_DENSE, IMAGE_LOCAL = str(ROOT / "configs/image/dense.yaml"), str(ROOT / "configs/image/local_2d.yaml")


def _entries() -> dict:
    """Sentiment: two dense rows, a truncated row, a sparse sweep; image: a sparse row without a dense one."""
    return {
        "long-dense": {"task": "sentiment", "config": DENSE, "role": "dense"},
        "long-nodrop": {"task": "sentiment", "config": DENSE, "role": "dense",
                        "overrides": {"model.config.attention_probs_dropout_prob": 0}},
        "long-512": {"task": "sentiment", "config": TRUNCATED, "role": "dense_truncated"},
        "long-window": {"task": "sentiment", "config": WINDOW, "role": "sparse", "sweep": {"sparse.options.window": [32, 128]}},
        "image-local": {"task": "image", "config": IMAGE_LOCAL},
    }


#: run -> (accuracy, test size, train samples/s, eval samples/s, pattern, eval length)
FAKE = {
    "long-dense": (0.70, 100, 10.0, 40.0, "dense", 2250),      # the faster dense row for eval
    "long-nodrop": (0.72, 100, 20.0, 32.0, "dense", 2250),     # the faster dense row for train
    "long-512": (0.60, 100, 50.0, 100.0, "dense", 512),
    "long-window-window32": (0.64, 100, 30.0, 60.0, "sliding_window", 2250),
    "long-window-window128": (0.68, 100, 25.0, 50.0, "sliding_window", 2250),
    "image-local": (0.30, 500, 12.0, 48.0, "local_2d", 785),
}


def _metrics(name: str) -> dict:
    accuracy, n, train, evaluate, pattern, length = FAKE[name]
    backends = {} if pattern == "dense" else {"layer.0": "blocksparse"}
    return {"run_name": name, "status": "ok", "primary_metric": "accuracy", "test": {"accuracy": accuracy},
            "data": {"train": 48, "test": n}, "sparse": {"pattern": pattern, "token_density": 1.0 if pattern == "dense" else 0.1,
                                             "eval_length": length, "backends": backends},
            "speed": {"train_samples_per_s": train, "eval_samples_per_s": evaluate, "peak_memory_mb": 900.0,
                      "peak_memory_kind": "ru_maxrss (process peak RSS)"}}


def _fake_launcher(launched: list[str]):
    def launch(config_path: Path, run_dir: Path, timeout_s) -> Launched:
        launched.append(run_dir.name)
        (run_dir / "metrics.json").write_text(json.dumps(_metrics(run_dir.name)))
        return Launched(0)

    return launch


def _write_fake_runs(study: StudyConfig) -> None:
    """Run folders as a finished study leaves them (metrics.json only), for collect()."""
    for run in expand(study):
        folder = study.root / "runs" / run.name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(_metrics(run.name)))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- a fresh folder per study; the reference is read, never written --------------------------------------------------


def test_fresh_folder_names_never_collide(tmp_path):
    first = fresh_folder(tmp_path, "s")
    assert first.parent == tmp_path and first.name.startswith("s-") and len(first.name) == len("s-20250101-120000")
    first.mkdir()
    second = fresh_folder(tmp_path, "s")
    assert second != first and not second.exists()
    study = StudyConfig.from_dict({"name": "s"})
    assert study.output_dir is None
    root = study.root
    assert root.parent == Path("results") and root.name.startswith("s-") and study.root == root  # fixed once chosen
    assert study.reference == Path("results/reference/s")


def test_study_writes_a_fresh_folder_and_leaves_the_reference_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = {"name": "s", "launcher": "python", "entries": _entries()}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    # A committed reference: the same runs, ok, made with the same configs (apart from output_dir).
    reference = StudyConfig.from_dict({**data, "output_dir": "results/reference/s"})
    for run in expand(reference):
        folder = reference.root / "runs" / run.name
        folder.mkdir(parents=True)
        metrics = _metrics(run.name)
        metrics["test"]["accuracy"] -= 0.05
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "run_config.yaml").write_text(yaml.safe_dump(runner.resolve(reference, run), sort_keys=False))
    (reference.root / "runs/long-512/run_config.yaml").write_text(yaml.safe_dump({"seed": 1}))  # changed since
    before = _digest(tmp_path / "results/reference")

    launched: list[str] = []
    monkeypatch.setattr(study_script, "run_study",
                        lambda study, runs: run_study(study, runs, launcher=_fake_launcher(launched)))
    assert study_script.main(["--config", "s.yaml"]) == 0
    assert launched == list(FAKE)  # nothing reused, although the reference holds every run ok
    assert _digest(tmp_path / "results/reference") == before
    (fresh,) = [p for p in (tmp_path / "results").iterdir() if p.name != "reference"]
    assert fresh.name.startswith("s-") and (fresh / "report.md").is_file()
    with open(fresh / "report.csv") as handle:
        table = {r["run"]: r for r in csv.DictReader(handle)}
    assert float(table["long-dense"]["ref_value"]) == pytest.approx(0.65)
    assert float(table["long-dense"]["ref_diff"]) == pytest.approx(0.05)
    assert table["long-512"]["ref_value"] == "" and "seed" in table["long-512"]["ref_note"]
    report = (fresh / "report.md").read_text()
    assert "| reference (diff) |" in report and "0.6500 (+0.0500)" in report
    assert "Reference: `results/reference/s`" in report and "long-512 (config differs in" in report

    # Resuming is explicit: the same --output_dir skips the finished runs with an unchanged config.
    launched.clear()
    assert study_script.main(["--config", "s.yaml", "--output_dir", str(fresh)]) == 0
    assert launched == []
    assert study_script.main(["--config", "s.yaml", "--output_dir", str(fresh), "--entries.long-512.overrides.seed",
                              "5"]) == 0
    assert launched == ["long-512"]


def test_report_only_needs_the_study_folder(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "entries": _entries()}))
    assert study_script.main(["--config", str(path), "--report-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--output_dir" in err


# -- roles, speed-ups and the standard error, on synthetic run folders -------------------------------------------------


def test_speedups_divide_by_the_faster_dense_row_and_the_truncated_row(tmp_path):
    study = StudyConfig.from_dict({"name": "s", "output_dir": str(tmp_path / "study"),
                                   "reference_dir": str(tmp_path / "none"), "entries": _entries()})
    _write_fake_runs(study)
    table = {r["run"]: r for r in write_report(study, collect(study, expand(study)), wall_s=1.0)}
    window = table["long-window-window32"]
    assert window["role"] == "sparse" and table["long-512"]["role"] == "dense_truncated"
    assert window["train_speedup"] == pytest.approx(30 / 20)  # long-nodrop trains faster
    assert window["eval_speedup"] == pytest.approx(60 / 40)   # long-dense evaluates faster
    assert window["train_speedup_vs_truncated"] == pytest.approx(30 / 50)
    assert window["eval_speedup_vs_truncated"] == pytest.approx(60 / 100)
    assert table["long-nodrop"]["train_speedup"] == 1.0 and table["long-dense"]["train_speedup"] == 0.5
    assert table["long-dense"]["eval_speedup"] == 1.0 and table["long-512"]["train_speedup_vs_truncated"] == 1.0
    # image has no dense row in this study: no speed-up (never against another task's dense run)
    image = table["image-local"]
    assert image["role"] == "sparse" and image["train_speedup"] is None and image["train_speedup_vs_truncated"] is None

    with open(tmp_path / "study/report.csv") as handle:
        rows = {r["run"]: r for r in csv.DictReader(handle)}
    assert float(rows["long-window-window32"]["train_speedup_vs_truncated"]) == pytest.approx(0.6)
    assert rows["long-window-window32"]["eval_length"] == "2250" and rows["long-512"]["eval_length"] == "512"
    assert rows["long-dense"]["peak_memory_mb"] == "900.0" and rows["long-window-window32"]["backends"] == "blocksparse"
    report = (tmp_path / "study/report.md").read_text()
    sentiment, image_part = report.split("## image")
    assert "| train vs truncated | eval vs truncated |" in sentiment and "vs truncated |" not in image_part
    assert "| long-window-window32 | sparse | ok (cached) | 0.6400 ± 0.048 | 48 | 100 | 0.100 | 2250 | 30.0 | 60.0 | 1.50x | 1.50x | " \
           "0.60x | 0.60x | 900.0 | blocksparse |" in sentiment
    assert ("Speed-ups divide by the faster full-length dense run on the same documents (train: long-nodrop (20.0/s "
            "on 48 documents); eval: long-dense (40.0/s on 100 documents)); the \"vs truncated\" columns by long-512 "
            "(dense attention on truncated inputs at 512 tokens)."
            in sentiment)
    assert "No dense full-length run finished, so there are no speed-ups." in image_part
    assert "Reference: none" in report


def test_standard_error_of_an_accuracy_or_the_one_a_run_recorded():
    from hf_sparse.lab.study.report import standard_error

    assert standard_error("accuracy", 0.7, 100) == pytest.approx(math.sqrt(0.7 * 0.3 / 100), abs=1e-4)
    assert standard_error("accuracy", 0.64, 100) == 0.048
    assert standard_error("bleu", 20.0, 100) is None and standard_error("accuracy", 0.5, None) is None
    assert standard_error("rougeL", 0.3, 160, recorded=0.021345) == 0.0213  # a seq2seq run records its own


@pytest.mark.parametrize("entries, words", [
    ({"a": {"task": "image", "config": "x", "role": "baseline"}}, ["entries.a.role", "baseline", "dense_truncated"]),
    ({"a": {"task": "image", "config": "x", "role": "dense_truncated"},
      "b": {"task": "image", "config": "y", "role": "dense_truncated"}}, ["'a'", "'b'", "dense_truncated", "keep one"]),
    ({"a": {"task": "image", "config": "x", "role": "dense_truncated", "sweep": {"train.seed": [1, 2]}}},
     ["entries.a.sweep", "dense_truncated"]),
])
def test_bad_roles_are_one_line_errors(entries, words):
    with pytest.raises(ConfigError) as info:
        StudyConfig.from_dict({"name": "s", "entries": entries})
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


# -- failures: out of memory, killed, past the timeout; the study goes on -----------------------------------------------

FAKE_FINETUNE = '''
import json, os, signal, sys, time
from pathlib import Path
config = Path(sys.argv[sys.argv.index("--config") + 1])
name = config.parent.name
if name == "oom":
    raise MemoryError("cannot allocate 8589934592 bytes")
if name == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
if name == "slow":
    time.sleep(600)
(config.parent / "metrics.json").write_text(json.dumps({"run_name": name, "status": "ok", "primary_metric": "accuracy",
                                                        "test": {"accuracy": 0.5}, "speed": {}, "sparse": {}}))
'''


def test_failed_runs_are_recorded_with_their_reason_and_the_study_goes_on(tmp_path, monkeypatch):
    """Through the real subprocess launcher, with a stand-in for the fine-tuning module."""
    (tmp_path / "fake_finetune.py").write_text(FAKE_FINETUNE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(runner, "FINETUNE_MODULE", "fake_finetune")
    names = ["oom", "killed", "slow", "fine"]
    study = StudyConfig.from_dict({"name": "s", "output_dir": str(tmp_path / "study"), "launcher": "python",
                                   "timeout_s": 600,
                                   "entries": {n: {"task": "image", "config": IMAGE_DENSE} for n in names}})
    real = runner.subprocess_launcher(study)

    def launch(config_path: Path, run_dir: Path, timeout_s) -> Launched:  # only "slow" meets a (1 s) timeout
        return real(config_path, run_dir, 1 if run_dir.name == "slow" else timeout_s)

    lines: list[str] = []
    results = run_study(study, expand(study), launcher=launch, log=lines.append)
    assert [r.status for r in results] == ["failed", "failed", "failed", "ok"]
    oom, killed, slow, _ = results
    assert oom.error == "MemoryError: cannot allocate 8589934592 bytes"
    assert killed.error == "killed by SIGKILL (likely out of memory: the kernel's OOM killer)"
    assert slow.error == "timed out after 1 s (study key timeout_s)"
    for result in results[:3]:
        recorded = json.loads((tmp_path / "study/runs" / result.run.name / "metrics.json").read_text())
        assert recorded == {"run_name": result.run.name, "status": "failed", "error": result.error}
    finished = [line for line in lines if ": ok in " in line or ": FAILED after " in line]
    assert [line.split("]")[0] for line in finished] == ["[1/4", "[2/4", "[3/4", "[4/4"]  # a progress line per run
    assert "FAILED" in finished[2] and "timed out" in finished[2] and "(study " in finished[2]
    write_report(study, results, wall_s=1.0)
    report = (tmp_path / "study/report.md").read_text()
    assert "| failed: MemoryError: cannot allocate 8589934592 bytes |" in report
    assert "| failed: timed out after 1 s (study key timeout_s) |" in report


# -- the shipped study configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, count", [("default", 11), ("quick", 5)])
def test_default_and_quick_configs_expand_and_validate(name, count, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    before = sorted(p.name for p in (ROOT / "results").iterdir())
    assert study_script.main(["--config", f"configs/study/{name}.yaml", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{count} runs, 0 invalid" and len(out) == count + 1
    assert sorted(p.name for p in (ROOT / "results").iterdir()) == before  # --list creates no folder
    study = StudyConfig.load(ROOT / f"configs/study/{name}.yaml")
    assert study.output_dir is None and study.reference == Path(f"results/reference/study-{name}")
    runs = expand(study)
    assert {r.task for r in runs} == {"sentiment", "image"} and all(r.role for r in runs)
    for task in ("sentiment", "image"):
        assert any(r.role == "dense" for r in runs if r.task == task)
    assert [r.name for r in runs if r.role == "dense_truncated"] == ["sentiment-long-dense-512"]
    sentiment = [runner.resolve(study, r) for r in runs if r.task == "sentiment"]
    assert {c["data"]["source"] for c in sentiment} == {"offline:rt_roundup"}
    image = [runner.resolve(study, r) for r in runs if r.task == "image"]
    assert {c["model"]["config"]["patch_size"] for c in image} == {1}
    assert {c["sparse"]["backend"] for c in image if c["sparse"]} == {"blocksparse"}
    if name == "default":
        by_name = {r.name: r for r in runs}
        assert by_name["sentiment-long-dense-nodrop"].overrides["model"]["config"]["attention_probs_dropout_prob"] == 0
        assert [r.sweep["sparse.options.window"] for r in runs if r.entry == "sentiment-long-window"] == [8, 32, 128]
        assert {"sentiment-long-bigbird", "sentiment-long-topk-blocks", "image-local-2d-window3"} <= set(by_name)
        # every sentiment run starts from the stage-0 model that the study's own prepare step trains in its folder
        stage0 = {r.prepare.creates for r in runs if r.task == "sentiment"}
        assert len(stage0) == 1 and Path(next(iter(stage0))).parent.parent.parent == study.root
        assert {c["model"]["name_or_path"] for c in sentiment} == stage0


def test_seq2seq_config_expands_and_chains_its_stage0_steps(capsys, monkeypatch):
    """configs/study/seq2seq.yaml: 8 summarization rows on full-length man pages (but the one truncated row), all
    starting from stage 0c (whole pages), whose prepare step needs stage 0b (pages' first 512 tokens), which needs
    stage 0a; 5 translation rows on package synopses, all starting from the stage-0 translator, which needs the
    same stage 0a; every stage 0 inside the study folder; sparse rows patch the encoder only, but the one that
    windows the decoder too."""
    monkeypatch.chdir(ROOT)
    assert study_script.main(["--config", "configs/study/seq2seq.yaml", "--list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "13 runs, 0 invalid"
    study = StudyConfig.load(ROOT / "configs/study/seq2seq.yaml")
    # the longest prepare step, the translator, took 66.6 min (configs/translation/dense_stage0.yaml): 20 % headroom
    assert study.reference == Path("results/reference/study-seq2seq") and study.timeout_s >= 1.2 * 66.6 * 60
    runs = expand(study)
    summarization = [r for r in runs if r.task == "summarization"]
    translation = [r for r in runs if r.task == "translation"]
    assert len(summarization) == 8 and len(translation) == 5
    assert [r.name for r in runs if r.role == "dense_truncated"] == ["summarization-long-dense-512"]
    assert [r.name for r in runs if r.role == "dense"] == [
        "summarization-long-dense-nodrop", "summarization-long-dense", "translation-dense"]
    stage0c = {r.prepare.creates for r in summarization}
    stage0b = {r.prepare.needs.creates for r in summarization}
    stage0a = {r.prepare.needs.needs.creates for r in summarization} | {r.prepare.needs.creates for r in translation}
    translator = {r.prepare.creates for r in translation}
    assert len(stage0c) == len(stage0b) == len(stage0a) == len(translator) == 1
    assert all(Path(p).parents[2] == study.root for p in stage0c | stage0b | stage0a | translator)
    assert f"--model.name_or_path {next(iter(stage0b))}" in runs[0].prepare.resolved_command()
    assert all(f"--model.name_or_path {next(iter(stage0a))}" in step.resolved_command()
               for step in (runs[0].prepare.needs, translation[0].prepare))
    configs = {r.name: runner.resolve(study, r) for r in summarization}
    assert {c["model"]["name_or_path"] for c in configs.values()} == stage0c
    assert {c["data"]["source"] for c in configs.values()} == {"offline:manpages"}
    assert {name: c["data"]["max_length"] for name, c in configs.items() if c["data"]["max_length"] != 4096} == {
        "summarization-long-dense-512": 512}
    dropout = {name: c["model"]["config"]["attention_probs_dropout_prob"] for name, c in configs.items()}
    assert dropout.pop("summarization-long-dense") == 0.1 and set(dropout.values()) == {0}
    sparse = {name: c["sparse"] for name, c in configs.items() if c["sparse"]}
    assert len(sparse) == 5 and all(set(s) == {"encoder"} for s in sparse.values())
    assert [s["encoder"]["options"]["window"] for n, s in sparse.items() if "window" in n] == [8, 32, 128]
    configs = {r.name: runner.resolve(study, r) for r in translation}
    assert {c["model"]["name_or_path"] for c in configs.values()} == translator
    assert {(c["data"]["source"], c["data"]["language_pair"], c["data"]["max_test_samples"])
            for c in configs.values()} == {("offline", "en-fr", None)}
    assert {c["model"]["config"]["attention_probs_dropout_prob"] for c in configs.values()} == {0}
    parts = {name: sorted(c["sparse"]) for name, c in configs.items() if c["sparse"]}
    assert parts == {"translation-window-window1": ["encoder"], "translation-window-window2": ["encoder"],
                     "translation-window-window4": ["encoder"], "translation-window-decoder": ["decoder", "encoder"]}
    assert configs["translation-window-decoder"]["sparse"]["decoder"]["options"] == {"window": 2, "num_global": 1}
