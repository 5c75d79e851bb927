"""A checkpoint saved from a patched model comes back patched through every ordinary Transformers load path
(after ``import hf_sparse``), and switching a patched model to another attention implementation unpatches it."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

import hf_sparse
from tests.helpers.models import model_inputs, tiny_model

_AUTO = {"bert": tf.AutoModelForSequenceClassification, "gpt2": tf.AutoModelForCausalLM}
_CLASS = {"bert": tf.BertForSequenceClassification, "gpt2": tf.GPT2LMHeadModel}


def _out(model, inputs) -> torch.Tensor:
    """Logits and last hidden states (a tiny classifier's logits alone barely move with the pattern)."""
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return torch.cat([out.logits.flatten(), out.hidden_states[-1].flatten()])


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _saved(family: str, path) -> str:
    model = hf_sparse.patch_model(tiny_model(family), "sliding_window", window=4, num_global=0)
    model.save_pretrained(path)
    return str(path)


def _check_same_as_load_patched(model, family: str, folder: str) -> None:
    reference = hf_sparse.load_patched(_CLASS[family], folder).eval()
    inputs = model_inputs(family)
    dense = _CLASS[family].from_pretrained(folder, attn_implementation="sdpa").eval()
    out = _out(model.eval(), inputs)
    assert torch.allclose(out, _out(reference, inputs), atol=1e-6, rtol=0)
    assert not torch.allclose(out, _out(dense, inputs), atol=1e-3)
    assert hf_sparse.patched_modules(model) == hf_sparse.patched_modules(reference)
    assert set(hf_sparse.last_backends(model).values()) != {None}


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_from_pretrained_comes_back_patched(family, tmp_path):
    folder = _saved(family, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["attn_implementation"] == "hf_sparse"
    _check_same_as_load_patched(_AUTO[family].from_pretrained(folder), family, folder)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_from_pretrained_with_the_hf_sparse_implementation_comes_back_patched(family, tmp_path):
    folder = _saved(family, tmp_path)
    _check_same_as_load_patched(_AUTO[family].from_pretrained(folder, attn_implementation="hf_sparse"), family, folder)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_from_config_comes_back_patched(family, tmp_path):
    folder = _saved(family, tmp_path)
    model = _AUTO[family].from_config(tf.AutoConfig.from_pretrained(folder))
    weights = _CLASS[family].from_pretrained(folder, attn_implementation="sdpa").state_dict()
    model.load_state_dict(weights)
    _check_same_as_load_patched(model, family, folder)


def _tiny_tokenizer() -> tf.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{f"w{i}": i + 4 for i in range(100)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def test_pipeline_comes_back_patched(tmp_path):
    folder = _saved("bert", tmp_path)
    tokenizer = _tiny_tokenizer()
    pipe = tf.pipeline("text-classification", model=folder, tokenizer=tokenizer, top_k=None)
    text = " ".join(f"w{(7 * i) % 100}" for i in range(40))
    scores = {d["label"]: d["score"] for d in pipe([text])[0]}
    reference = hf_sparse.load_patched(tf.BertForSequenceClassification, folder).eval()
    dense = tf.BertForSequenceClassification.from_pretrained(folder, attn_implementation="sdpa").eval()
    ids = tokenizer(text, return_tensors="pt")
    expected = _logits(reference, ids).softmax(-1)[0]
    got = torch.tensor([scores[reference.config.id2label[i]] for i in range(len(expected))])
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert hf_sparse.patched_modules(pipe.model) == hf_sparse.patched_modules(reference)
    inputs = model_inputs("bert")
    assert torch.allclose(_out(pipe.model, inputs), _out(reference, inputs), atol=1e-6, rtol=0)
    assert not torch.allclose(_out(pipe.model, inputs), _out(dense, inputs), atol=1e-3)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_unpatching_a_model_that_came_back_patched_restores_the_default(family, tmp_path):
    folder = _saved(family, tmp_path / "patched")
    model = _AUTO[family].from_pretrained(folder).eval()
    inputs = model_inputs(family)
    _out(model, inputs)
    hf_sparse.unpatch_model(model)
    dense = _CLASS[family].from_pretrained(folder, attn_implementation="sdpa").eval()
    assert model.config._attn_implementation == "sdpa" and not hf_sparse.patched_modules(model)
    assert torch.equal(_out(model, inputs), _out(dense, inputs))
    model.save_pretrained(tmp_path / "plain")
    saved = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert "hf_sparse" not in saved and "attn_implementation" not in saved


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_switching_a_patched_model_to_eager_unpatches_it(family, tmp_path):
    inputs = model_inputs(family)
    eager = tiny_model(family)
    eager.set_attn_implementation("eager")
    expected = _out(eager, inputs)
    model = hf_sparse.patch_model(tiny_model(family), "sliding_window", window=4, num_global=0)
    assert not torch.allclose(_out(model, inputs), expected, atol=1e-3)
    with pytest.warns(UserWarning, match="unpatched"):
        model.set_attn_implementation("eager")
        assert not hf_sparse.patched_modules(model)
    assert model.config._attn_implementation == "eager" and not hasattr(model.config, "hf_sparse")
    assert torch.allclose(_out(model, inputs), expected, atol=1e-6, rtol=0)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "hf_sparse" not in saved and saved.get("attn_implementation") in (None, "eager")


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_switching_to_eager_is_noticed_by_the_next_forward(family):
    inputs = model_inputs(family)
    eager = tiny_model(family)
    eager.set_attn_implementation("eager")
    model = hf_sparse.patch_model(tiny_model(family), "sliding_window", window=4, num_global=0)
    model.set_attn_implementation("eager")
    with pytest.warns(UserWarning, match="unpatched"):
        out = _out(model, inputs)
    assert torch.allclose(out, _out(eager, inputs), atol=1e-6, rtol=0)
    assert not hf_sparse.patched_modules(model) and not hasattr(model.config, "hf_sparse")


def test_a_copy_of_a_partly_patched_model_keeps_its_states():
    """A deep copy of a patched model carries unsettled saved settings; its untargeted (dense) modules must not
    re-apply them over the copied states (that would rebuild learned parameters and drop the call counts)."""
    import copy

    model = tiny_model("bert")
    hf_sparse.patch_model(model, "sliding_window", window=2, layers=[0])
    twin = copy.deepcopy(model)
    state = hf_sparse.integration.get_state(twin.bert.encoder.layer[0].attention.self)
    twin(**model_inputs("bert"))
    assert hf_sparse.integration.get_state(twin.bert.encoder.layer[0].attention.self) is state
    assert state.calls == 1
    assert hf_sparse.integration.get_state(twin.bert.encoder.layer[1].attention.self) is None
    assert len(twin.config.hf_sparse["rules"]) == 1
