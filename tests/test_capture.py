"""capture_attention leaves every model's attention implementation as it found it, nested or side by side."""

from __future__ import annotations

import pytest
import torch

import hf_sparse
from hf_sparse.capture import CAPTURE_NAME, capture_attention
from hf_sparse.integration import IMPLEMENTATION_NAME, attention_configs
from hf_sparse.models import attention_sites
from tests.helpers.models import tiny_model


def _implementations(model: torch.nn.Module) -> list[tuple[int, str | None]]:
    return [(id(cfg), cfg._attn_implementation) for cfg in attention_configs(model)]


def test_nested_captures_of_one_and_two_models_restore_each_implementation():
    bert, gpt2 = tiny_model("bert"), tiny_model("gpt2")
    hf_sparse.patch_model(bert, "sliding_window", window=4)
    before = {"bert": _implementations(bert), "gpt2": _implementations(gpt2)}
    assert {name for _, name in before["bert"]} == {IMPLEMENTATION_NAME}
    assert IMPLEMENTATION_NAME not in {name for _, name in before["gpt2"]}
    bert_inputs = {"input_ids": torch.randint(1, 100, (2, 12))}
    gpt2_inputs = {"input_ids": torch.randint(1, 100, (1, 9))}
    inner: dict[str, list] = {}

    def capture_inside(module, args, kwargs):
        if "started" in inner:
            return
        inner["started"] = []
        assert {name for _, name in _implementations(bert)} == {CAPTURE_NAME}
        inner["bert"] = capture_attention(bert, bert_inputs)  # the same model, inside its own capture
        inner["gpt2"] = capture_attention(gpt2, gpt2_inputs)  # another model, inside the capture of the first
        assert {name for _, name in _implementations(bert)} == {CAPTURE_NAME}
        assert _implementations(gpt2) == before["gpt2"]

    first = next(s.module for s in attention_sites(bert) if not s.cross and s.layer == 0)
    handle = first.register_forward_pre_hook(capture_inside, with_kwargs=True)
    try:
        outer = capture_attention(bert, bert_inputs)
    finally:
        handle.remove()

    bert_names = [s.name for s in attention_sites(bert) if not s.cross]
    assert [c.name for c in outer] == [c.name for c in inner["bert"]] == bert_names
    assert all(torch.equal(a.query, b.query) and torch.equal(a.key, b.key) for a, b in zip(outer, inner["bert"], strict=True))
    assert [c.name for c in inner["gpt2"]] == [s.name for s in attention_sites(gpt2) if not s.cross]
    assert all(c.causal for c in inner["gpt2"]) and not any(c.causal for c in outer)
    assert _implementations(bert) == before["bert"]
    assert _implementations(gpt2) == before["gpt2"]


def test_capture_restores_the_implementation_when_the_forward_fails():
    model = tiny_model("gpt2")
    before = _implementations(model)
    with pytest.raises(IndexError):  # a token id past the 120-entry vocabulary
        capture_attention(model, {"input_ids": torch.tensor([[1, 2, 500]])})
    assert _implementations(model) == before
    assert len(capture_attention(model, {"input_ids": torch.randint(1, 100, (1, 5))})) == 2
