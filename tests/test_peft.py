"""PEFT (LoRA) and hf_sparse in both orders: patch then ``get_peft_model``, and ``get_peft_model`` then patch.
Training runs, the merged model's checkpoint reloads with ``load_patched``, and ``unpatch_model`` on the wrapper
restores the original outputs exactly."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import hf_sparse
from tests.helpers.models import model_inputs, run_model, tiny_model

peft = pytest.importorskip("peft")

# PEFT reads Transformers' deprecated ``is_gradient_checkpointing`` (pyproject turns that warning into an error)
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ORDERS = ["patch_then_peft", "peft_then_patch"]
PATTERN = {"pattern": "sliding_window", "window": 2, "num_global": 1}


def _lora():
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)


def _wrapped(order: str):
    """A tiny BERT and its LoRA wrapper, patched in ``order``; also the base's outputs before anything."""
    base = tiny_model("bert")
    inputs = model_inputs("bert")
    before = run_model(base, inputs)
    if order == "patch_then_peft":
        hf_sparse.patch_model(base, **PATTERN)
        wrapper = peft.get_peft_model(base, _lora())
    else:
        wrapper = peft.get_peft_model(base, _lora())
        hf_sparse.patch_model(wrapper, **PATTERN)
    return base, wrapper.eval(), inputs, before


def _train_step(wrapper, inputs) -> None:
    wrapper.train()
    params = [p for p in wrapper.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in wrapper.named_parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    loss = wrapper(**inputs, labels=torch.tensor([0, 2])).loss
    loss.backward()
    grads = {n: p.grad for n, p in wrapper.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)  # lora_A's are 0 while B is 0
    optimizer.step()
    optimizer.zero_grad()
    wrapper.eval()


@pytest.mark.parametrize("order", ORDERS)
def test_names_are_relative_to_the_transformers_model(order):
    base, wrapper, _, _ = _wrapped(order)
    names = sorted(hf_sparse.patched_modules(wrapper))
    assert names == sorted(hf_sparse.patched_modules(base))
    assert names == ["bert.encoder.layer.0.attention.self", "bert.encoder.layer.1.attention.self"]
    assert [n for rule in base.config.hf_sparse["rules"] for n in rule["modules"]] == names
    assert hf_sparse.summary(wrapper) == hf_sparse.summary(base)  # the wrapper reports the model inside it
    assert "base_model" not in hf_sparse.summary(wrapper)


@pytest.mark.parametrize("order", ORDERS)
def test_train_merge_save_and_load_patched(order, tmp_path):
    base, wrapper, inputs, before = _wrapped(order)
    _train_step(wrapper, inputs)
    trained = run_model(wrapper, inputs)
    merged = wrapper.merge_and_unload().eval()
    assert isinstance(merged, tf.BertForSequenceClassification)
    out = run_model(merged, inputs)
    torch.testing.assert_close(out, trained, atol=1e-5, rtol=0)
    merged.save_pretrained(tmp_path)
    loaded = hf_sparse.load_patched(tf.BertForSequenceClassification, str(tmp_path)).eval()
    torch.testing.assert_close(run_model(loaded, inputs), out, atol=1e-5, rtol=0)
    assert {k: v.to_dict() for k, v in hf_sparse.patched_modules(loaded).items()} == \
        {k: v.to_dict() for k, v in hf_sparse.patched_modules(merged).items()}
    assert not torch.allclose(out, before)


@pytest.mark.parametrize("order", ORDERS)
def test_unpatch_on_the_wrapper_restores_the_original(order):
    base, wrapper, inputs, before = _wrapped(order)
    for cycle in range(2):
        sparse = run_model(wrapper, inputs)
        assert not torch.allclose(sparse, before)
        hf_sparse.unpatch_model(wrapper)
        assert torch.equal(run_model(wrapper, inputs), before)  # LoRA's B starts at zero
        assert not hasattr(base.config, "hf_sparse") and not hasattr(wrapper.config, "hf_sparse")
        assert base.config._attn_implementation == "sdpa"
        assert not hf_sparse.patched_modules(wrapper)
        if cycle == 0:
            hf_sparse.patch_model(wrapper, **PATTERN)


def test_an_adapter_of_a_patched_model_loads_onto_the_load_patched_base(tmp_path):
    """The adapter folder carries no sparse settings (docs/integration.md): they travel with the base."""
    base = tiny_model("bert")
    inputs = model_inputs("bert")
    hf_sparse.patch_model(base, **PATTERN)
    base.save_pretrained(tmp_path / "base")  # the patched base, before LoRA wraps its layers
    wrapper = peft.get_peft_model(base, _lora())
    _train_step(wrapper, inputs)
    out = run_model(wrapper, inputs)
    wrapper.save_pretrained(tmp_path / "adapter")
    assert "hf_sparse" not in (tmp_path / "adapter" / "adapter_config.json").read_text()
    assert not (tmp_path / "adapter" / "config.json").exists()
    hf_sparse.unpatch_model(wrapper)
    dense = run_model(wrapper, inputs)
    reloaded_base = hf_sparse.load_patched(tf.BertForSequenceClassification, str(tmp_path / "base"))
    reloaded = peft.PeftModel.from_pretrained(reloaded_base, tmp_path / "adapter").eval()
    torch.testing.assert_close(run_model(reloaded, inputs), out, atol=1e-5, rtol=0)
    # the same adapter on the checkpoint loaded with plain from_pretrained is sparse too (docs/integration.md)
    auto_base = tf.BertForSequenceClassification.from_pretrained(tmp_path / "base")
    auto = peft.PeftModel.from_pretrained(auto_base, tmp_path / "adapter").eval()
    torch.testing.assert_close(run_model(auto, inputs), out, atol=1e-5, rtol=0)
    # loaded with the dense implementation asked for explicitly, it runs dense
    plain_base = tf.BertForSequenceClassification.from_pretrained(tmp_path / "base", attn_implementation="sdpa")
    plain = peft.PeftModel.from_pretrained(plain_base, tmp_path / "adapter").eval()
    torch.testing.assert_close(run_model(plain, inputs), dense, atol=1e-5, rtol=0)
    # ... until the settings its config kept are applied through the wrapper
    assert hf_sparse.apply_saved_patch(plain) is plain
    torch.testing.assert_close(run_model(plain, inputs), out, atol=1e-5, rtol=0)
