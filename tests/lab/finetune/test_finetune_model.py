"""A finished fine-tuning run saves the model and its processor to ``<run_dir>/model``, metrics.json names the
folder, and ``load_patched`` reloads it with the same sparse settings and logits (in process, tiny slices)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

import hf_sparse
from hf_sparse.lab.finetune import RunConfig, loop

ROOT = Path(__file__).resolve().parents[3]
TINY = ["--data.max_train_samples", "8", "--data.max_eval_samples", "4", "--data.max_test_samples", "4",
        "--train.batch_size", "4", "--train.eval_batch_size", "4", "--train.epochs", "1",
        "--train.num_threads", "1"]
CASES = {
    "sentiment": (["--config", "configs/sentiment/sliding_window.yaml", "--data.max_length", "32"],
                  transformers.AutoModelForSequenceClassification, transformers.AutoTokenizer),
    "image": (["--config", "configs/image/local_2d.yaml", "--model.config",
               "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, patch_size: 7}"],
              transformers.AutoModelForImageClassification, transformers.AutoImageProcessor),
}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(CASES))
def test_finished_run_saves_a_model_load_patched_reproduces(task, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_SPARSE_DATA", str(ROOT / "data"))
    args, model_class, processor_class = CASES[task]
    cfg = RunConfig.load(ROOT / args[1], [*args[2:], *TINY, "--output_dir", str(tmp_path), "--run_name", task])
    trainers = []

    class Recording(loop.Trainer):  # keeps the trainer, to compare with the model it fine-tuned
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            trainers.append(self)

    monkeypatch.setattr(loop, "Trainer", Recording)
    metrics = loop.run(cfg)
    run_dir = tmp_path / task
    written = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model_dir"] == written["model_dir"] == "model"
    folder = run_dir / written["model_dir"]
    assert (folder / "config.json").exists()
    processor_class.from_pretrained(folder)  # the tokenizer / image processor sits beside the model

    trainer = trainers[0]
    tuned = trainer.acc.unwrap_model(trainer.model).eval()
    loaded = hf_sparse.load_patched(model_class, str(folder)).eval()
    assert type(loaded) is type(tuned)
    want = {k: v.to_dict() for k, v in hf_sparse.patched_modules(tuned).items()}
    assert want and {k: v.to_dict() for k, v in hf_sparse.patched_modules(loaded).items()} == want
    batch = trainer.task.model_inputs(next(iter(trainer.test_loader)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, tuned(**batch).logits, atol=1e-5, rtol=0)
