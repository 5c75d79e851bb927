"""learned_gate: parameters live on the patched modules, receive gradients from distillation, are saved and
reloaded with the model, and disappear after unpatching."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertForSequenceClassification, BertModel

import hf_sparse
from hf_sparse.learned import BlockGate, gate_scope, gates
from hf_sparse.learned.distill import example_loss, gate_examples, train_gates
from hf_sparse.patterns import MaskContext, make_pattern
from tests.helpers.models import model_inputs, run_model, tiny_model

OPTIONS = {"block_size": 8, "k": 1}


def _perturb(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gates(model).values():
            for p in gate.parameters():
                p.add_(torch.randn(p.shape, generator=gen))


def test_gates_are_added_to_the_patched_modules_only_and_removed_by_unpatch():
    model = tiny_model("bert")
    keys_before = set(model.state_dict())
    inputs = model_inputs("bert", length=40)
    before = run_model(model, inputs)
    module = dict(model.named_modules())["bert.encoder.layer.1.attention.self"]
    hooks_before = (dict(module._forward_hooks), dict(module._forward_pre_hooks))
    hf_sparse.patch_model(model, "learned_gate", layers=[1], **OPTIONS)
    added = set(model.state_dict()) - keys_before
    assert added == {f"bert.encoder.layer.1.attention.self.hf_sparse_gate.{n}"
                     for n in ("q_proj", "k_proj", "distance_bias", "first_bias")}
    assert list(gates(model)) == ["bert.encoder.layer.1.attention.self"]
    gate = gates(model)["bert.encoder.layer.1.attention.self"]
    assert gate.q_proj.shape == (4, 8, 8) and gate.distance_bias.shape == (4, 17)
    assert torch.isfinite(run_model(model, inputs)).all()
    hf_sparse.unpatch_model(model)
    assert set(model.state_dict()) == keys_before
    assert not gates(model)
    assert (dict(module._forward_hooks), dict(module._forward_pre_hooks)) == hooks_before
    assert torch.equal(run_model(model, inputs), before)


def test_untrained_gate_chooses_like_topk_and_a_changed_gate_changes_the_choice():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 64, 8), torch.randn(2, 2, 64, 8)
    ctx = MaskContext.for_length(64)
    gate = BlockGate(4, 2, 8)
    module = torch.nn.Module()
    module.hf_sparse_gate = gate
    learned, topk = make_pattern("learned_gate", **OPTIONS), make_pattern("topk_blocks", **OPTIONS)
    with gate_scope(module):
        assert torch.equal(learned.select(q, k, ctx), topk.select(q, k, ctx))
        with torch.no_grad():
            gate.distance_bias[:, 8 + 3] = 100.0  # strongly prefer the key block 3 blocks ahead
        chosen = learned.select(q, k, ctx)
    assert chosen[:, :, torch.arange(5), torch.arange(5) + 3].all()
    with pytest.raises(ValueError, match="learned_gate needs the gate of its attention module"):
        learned.select(q, k, ctx)


def test_distillation_gives_every_gate_parameter_a_gradient_and_lowers_the_loss():
    # num_global=0: with a global block, block 0 is always kept and first_bias has nothing to learn
    model = hf_sparse.patch_model(tiny_model("bert"), "learned_gate", num_global=0, **OPTIONS)
    inputs = model_inputs("bert", length=64, pad_from=50)
    examples = gate_examples(model, inputs)
    assert len(examples) == 2
    for example in examples:
        gate = example.module.hf_sparse_gate
        loss = example_loss(gate, example)
        loss.backward()
        for name, p in gate.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for n, p in model.named_parameters() if "hf_sparse_gate" not in n)
    model.zero_grad()
    history = train_gates(model, [examples], steps=30, learning_rate=0.05, log=None)
    assert history[-1]["loss"] < history[0]["loss"]


def test_save_and_reload_restores_the_gate_weights(tmp_path):
    model = tiny_model("bert")
    hf_sparse.patch_model(model, "learned_gate", layers=[0], **OPTIONS)
    hf_sparse.patch_model(model, "topk_blocks", layers=[1], **OPTIONS)
    _perturb(model)
    inputs = model_inputs("bert", length=48)
    out = run_model(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = hf_sparse.load_patched(type(model), str(tmp_path)).eval()
    saved = {k: v for k, v in model.state_dict().items() if "hf_sparse_gate" in k}
    restored = {k: v for k, v in loaded.state_dict().items() if "hf_sparse_gate" in k}
    assert saved.keys() == restored.keys() and len(saved) == 4
    for key in saved:
        assert torch.equal(saved[key], restored[key]), key
    assert torch.equal(run_model(loaded, inputs), out)
    # a fresh gate would choose differently: the reload really restored the trained values
    fresh = hf_sparse.apply_saved_patch(type(model).from_pretrained(tmp_path)).eval()
    assert not torch.equal(run_model(fresh, inputs), out)


def test_reload_into_a_head_model_and_missing_gate_weights(tmp_path):
    base = BertModel(tiny_model("bert").config).eval()
    hf_sparse.patch_model(base, "learned_gate", **OPTIONS)
    _perturb(base, seed=3)
    base.save_pretrained(tmp_path / "base")
    head = hf_sparse.load_patched(BertForSequenceClassification, str(tmp_path / "base"))
    for name, gate in gates(base).items():
        torch.testing.assert_close(gates(head)["bert." + name].q_proj, gate.q_proj, atol=0, rtol=0)
    weights = load_file(tmp_path / "base" / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "hf_sparse_gate" not in k}, tmp_path / "base" / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match="has no saved values for 8 parameter"):
        hf_sparse.load_patched(BertModel, str(tmp_path / "base"))


def test_gate_model_forward_uses_each_layers_own_gate():
    model = hf_sparse.patch_model(tiny_model("gpt2"), "learned_gate", **OPTIONS)
    inputs = model_inputs("gpt2", length=48)
    untrained = run_model(model, inputs)
    topk = run_model(hf_sparse.patch_model(tiny_model("gpt2"), "topk_blocks", **OPTIONS), inputs)
    torch.testing.assert_close(untrained, topk, atol=1e-5, rtol=0)
    _perturb(model, seed=1)
    assert (run_model(model, inputs) - untrained).abs().max() > 1e-4
