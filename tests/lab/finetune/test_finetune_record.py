"""metrics.json's sparse block for data-dependent patterns, and fine-tuning from a checkpoint saved patched."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, BertForSequenceClassification

import hf_sparse
from hf_sparse.config import SparseConfig
from hf_sparse.lab.finetune.record import sparse_summary
from hf_sparse.lab.finetune.tasks import get_task
from hf_sparse.lab.finetune.tasks.helpers import from_pretrained
from hf_sparse.patch import iter_states
from tests.helpers.models import tiny_model


def _forward(model: torch.nn.Module, length: int = 32) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        model(input_ids=torch.randint(1, 100, (2, length)), attention_mask=torch.ones(2, length, dtype=torch.long))


def test_dynamic_pattern_density_is_what_the_modules_kept():
    model = tiny_model("bert")
    config = SparseConfig.from_dict({"pattern": "topk_blocks", "options": {"block_size": 4, "k": 1, "num_global": 1}})
    hf_sparse.patch_model(model, config)
    _forward(model)
    kept = [s.last_block_density for _, s in iter_states(model)]
    summary = sparse_summary(model, config, get_task("sentiment"), [32, 32])
    assert summary["density_source"].startswith("measured")
    assert summary["token_density"] == pytest.approx(sum(kept) / len(kept), abs=1e-4)
    # 8 key blocks per row: at least the local block and the chosen one, at most local + chosen + global block.
    assert 2 / 8 - 1e-6 <= summary["block_density"] <= 3 / 8 + 1e-6


def test_fixed_pattern_density_comes_from_the_pattern():
    model = tiny_model("bert")
    config = SparseConfig.from_dict({"pattern": "block_local", "options": {"block_size": 8}})
    hf_sparse.patch_model(model, config)
    summary = sparse_summary(model, config, get_task("sentiment"), [32])
    assert summary["token_density"] == pytest.approx(0.25)  # 4 diagonal blocks of 8 out of 32x32
    assert summary["density_source"] == "pattern at the test lengths"
    assert all(s.last_block_density is None for _, s in iter_states(model))


def test_checkpoint_saved_patched_is_fine_tuned_with_its_settings_and_gates(tmp_path):
    model = tiny_model("bert")
    hf_sparse.patch_model(model, "learned_gate", block_size=4, k=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hf_sparse_gate" in name:
                p.normal_()
    gates = {n: p.clone() for n, p in model.named_parameters() if "hf_sparse_gate" in n}
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(BertForSequenceClassification, str(tmp_path), config=AutoConfig.from_pretrained(tmp_path))
    configs = hf_sparse.patched_modules(loaded)
    assert len(configs) == 2 and all(c.pattern.describe().startswith("learned_gate") for c in configs.values())
    params = dict(loaded.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in gates.items())
