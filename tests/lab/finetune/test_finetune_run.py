"""hf-sparse finetune (python -m hf_sparse.lab.finetune) end to end on tiny slices: under `accelerate launch` (one and two CPU processes) and
plain python; complete metrics.json; an interrupted run resumes to the same result; bad configs fail fast."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MODULE = ["-m", "hf_sparse.lab.finetune"]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]

# 24 reviews, batch 4: 6 optimizer steps per epoch, 12 in all; a checkpoint every 4 steps.
SENTIMENT_TINY = [
    "--config", str(ROOT / "configs/sentiment/sliding_window.yaml"), "--data.max_train_samples", "24",
    "--data.max_eval_samples", "8", "--data.max_test_samples", "8", "--data.max_length", "32",
    "--train.batch_size", "4", "--train.eval_batch_size", "8", "--train.epochs", "2",
    "--train.checkpoint_every_steps", "4", "--train.num_threads", "1",
]
IMAGE_TINY = [
    "--config", str(ROOT / "configs/image/local_2d.yaml"), "--data.max_train_samples", "32",
    "--data.max_eval_samples", "16", "--data.max_test_samples", "16", "--train.batch_size", "8",
    "--train.eval_batch_size", "16", "--train.epochs", "1", "--train.num_threads", "1",
    "--model.config", "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, patch_size: 7}",
]
SCHEMA_KEYS = {"run_name", "task", "status", "primary_metric", "test", "validation_history", "speed", "sparse", "model",
               "data", "steps", "seed", "versions", "hardware", "config"}
SPEED_KEYS = {"train_samples_per_s", "train_tokens_per_s", "eval_samples_per_s", "eval_tokens_per_s",
              "generation_tokens_per_s", "train_wall_s", "total_wall_s", "peak_memory_mb"}
SPARSE_KEYS = {"pattern", "config", "token_density", "block_density", "eval_length", "backends"}


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.setdefault("HF_SPARSE_DATA", str(ROOT / "data"))
    return env


def _run(prefix: list[str], args: list[str], out: Path, name: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [*prefix, *MODULE, *args, "--output_dir", str(out), "--run_name", name]
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _single() -> list[str]:
    return [*ACCELERATE, "--config_file", str(ROOT / "configs/accelerate/cpu_single.yaml")]


def _metrics(out: Path, name: str) -> dict:
    return json.loads((out / name / "metrics.json").read_text())


def _check_complete(m: dict, task: str) -> None:
    assert SCHEMA_KEYS <= set(m), SCHEMA_KEYS - set(m)
    assert (m["status"], m["task"], m["primary_metric"]) == ("ok", task, "accuracy")
    assert 0 <= m["test"]["accuracy"] <= 1 and 0 <= m["test"]["f1"] <= 1
    assert SPEED_KEYS <= set(m["speed"]) and m["speed"]["train_samples_per_s"] > 0 and m["speed"]["peak_memory_mb"] > 0
    assert SPARSE_KEYS <= set(m["sparse"])
    assert m["metric_library"] in ("evaluate", "scikit-learn")
    assert {"torch", "transformers", "hf_sparse"} <= set(m["versions"])
    assert m["hardware"]["device"] == "cpu" and m["model"]["parameters"] > 0


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = _run(_single(), SENTIMENT_TINY, out, "full")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, _metrics(out, "full"), result


@pytest.mark.slow
def test_sentiment_end_to_end_under_accelerate(sentiment_run):
    out, m, result = sentiment_run
    _check_complete(m, "sentiment")
    assert m["steps"] == 12 and m["training"]["steps_per_epoch"] == 6 and m["training"]["train_samples_seen"] == 48
    assert [h["epoch"] for h in m["validation_history"]] == [1, 2]
    assert m["data"] == {**m["data"], "source": "offline:rotten_tomatoes", "train": 24, "validation": 8, "test": 8}
    sparse = m["sparse"]
    assert sparse["pattern"] == "sliding_window(num_global=1, window=4)" and 0 < sparse["token_density"] < 1
    assert sparse["backends"] and set(sparse["backends"].values()) == {"masked_sdpa"}
    assert len(sparse["backends"]) == 6  # every MiniLM layer's self-attention was patched
    assert "full: test loss" in result.stdout


@pytest.mark.slow
def test_interrupted_run_resumes_with_nothing_lost(sentiment_run, tmp_path):
    _, full, _ = sentiment_run
    crashed = _run([sys.executable], [*SENTIMENT_TINY, "--interrupt-after-steps", "9"], tmp_path, "part")
    assert crashed.returncode == 3, crashed.stderr[-3000:]
    assert not (tmp_path / "part" / "metrics.json").exists()
    assert sorted(p.name for p in (tmp_path / "part" / "checkpoints").iterdir()) == ["step_8"]
    resumed = _run([sys.executable], [*SENTIMENT_TINY, "--resume"], tmp_path, "part")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "(step 8, epoch 2, batch 2 of 6)" in resumed.stdout
    m = _metrics(tmp_path, "part")
    assert m["steps"] == full["steps"] == 12 and m["training"]["resumed_from_steps"] == [8]
    assert m["training"]["train_samples_seen"] == full["training"]["train_samples_seen"]
    # Same batches, same dropout draws: the resumed run ends where the uninterrupted one did.
    assert m["validation_history"] == full["validation_history"]
    assert m["test"]["loss"] == pytest.approx(full["test"]["loss"], abs=1e-5)


@pytest.mark.slow
def test_image_end_to_end_under_accelerate(tmp_path):
    result = _run(_single(), IMAGE_TINY, tmp_path, "vit")
    assert result.returncode == 0, result.stderr[-3000:]
    m = _metrics(tmp_path, "vit")
    _check_complete(m, "image")
    assert m["steps"] == 4 and m["data"]["source"] == "offline:fashion_mnist" and m["data"]["train"] == 32
    sparse = m["sparse"]
    assert sparse["eval_length"] == 17  # 4x4 patches + [CLS]
    assert sparse["pattern"].startswith("local_2d(window=1") and sparse["token_density"] < 0.6
    assert set(sparse["backends"].values()) == {"masked_sdpa"} and len(sparse["backends"]) == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_account_for_the_global_batch(tmp_path):
    launcher = [*ACCELERATE, "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
                "--main_process_port", str(_free_port())]
    args = [*SENTIMENT_TINY, "--sparse", "null", "--train.batch_size", "3", "--train.epochs", "1",
            "--train.checkpoint_every_steps", "null"]
    result = _run(launcher, args, tmp_path, "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    m = _metrics(tmp_path, "ddp")
    _check_complete(m, "sentiment")
    assert m["hardware"]["processes"] == 2
    # 24 samples, 3 per process, 2 processes: 4 optimizer steps of a global batch of 6, every sample once.
    t = m["training"]
    assert (m["steps"], t["global_batch_size"], t["batches_per_epoch_per_process"]) == (4, 6, 4)
    assert t["train_samples_seen"] == 24 and m["test"] and m["data"]["test"] == 8
    assert result.stdout.count("ddp: test loss") == 1  # one summary line, from the main process


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--train.epoch", "1"], "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["--train.batch_size", "big"], "config key 'train.batch_size' must be int, got str: 'big'"),
    (["--data.source", "/nonexistent/reviews.csv"], "local data '/nonexistent/reviews.csv' does not exist"),
    (["--model.name_or_path", "results/no_gate/checkpoints/model"],
     "model.name_or_path 'results/no_gate/checkpoints/model': no such folder"),
])
def test_bad_configs_fail_fast_with_one_line(tmp_path, args, message):
    result = _run([sys.executable], [*SENTIMENT_TINY, *args], tmp_path, "bad", timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("finetune: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if "data.source" in args:  # the run name was known: the study sees a failed run
        failed = _metrics(tmp_path, "bad")
        assert failed["status"] == "failed" and message in failed["error"]
