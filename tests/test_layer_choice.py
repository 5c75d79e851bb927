"""Per-layer choice from YAML: a config with ``layers`` patches exactly those layers (e.g. keeping the first
and last layers dense), for fixed and learned patterns, and the unpatched layers compute dense attention."""

from __future__ import annotations

import torch
import transformers as tf

import hf_sparse
from hf_sparse import SparseConfig
from hf_sparse.learned import gates
from tests.helpers.explicit import explicit_copy
from tests.helpers.formulas import formula
from tests.helpers.models import model_inputs, run_model

KEEP_ENDS_DENSE = """
pattern: sliding_window
options: {window: 3}
layers: [1, 2, 3, 4]     # layers 0 and 5 stay dense
"""


def _bert6():
    torch.manual_seed(0)
    return tf.BertModel(tf.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=128)).eval()


def _layer_names(prefix: str, layers) -> list[str]:
    return [prefix.format(i) for i in layers]


def test_yaml_layers_patch_exactly_those_layers_and_the_rest_stay_dense():
    model = _bert6()
    inputs = model_inputs("bert", length=40)
    config = SparseConfig.from_yaml(KEEP_ENDS_DENSE)
    assert config.layers == [1, 2, 3, 4]
    hf_sparse.patch_model(model, config)
    targets = _layer_names("encoder.layer.{}.attention.self", [1, 2, 3, 4])
    assert sorted(hf_sparse.patched_modules(model)) == targets
    got = run_model(model, inputs)
    hf_sparse.unpatch_model(model)

    def window(q_len, kv_len, q_offset, causal):
        return formula("sliding_window", q_len, kv_len, q_offset=q_offset, causal=causal, window=3)

    want = run_model(explicit_copy(model, window, targets), inputs)
    everywhere = run_model(explicit_copy(model, window, _layer_names("encoder.layer.{}.attention.self", range(6))),
                           inputs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (got - everywhere).abs().max() > 1e-4, "layers 0 and 5 must have stayed dense"


def test_yaml_learned_patterns_on_middle_layers_of_gpt2_and_reload(tmp_path):
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=120, n_embd=32, n_layer=4, n_head=4, n_positions=128)).eval()
    hf_sparse.patch_model(model, SparseConfig.from_yaml(
        "pattern: learned_gate\noptions: {block_size: 8, k: 1}\nlayers: [1, 2]\n"))
    assert sorted(gates(model)) == _layer_names("transformer.h.{}.attn", [1, 2])
    hf_sparse.patch_model(model, SparseConfig.from_yaml("pattern: topk_blocks\noptions: {block_size: 8, k: 2}\nlayers: [3]\n"))
    patched = hf_sparse.patched_modules(model)
    assert {k: v.pattern.name for k, v in patched.items()} == {
        "transformer.h.1.attn": "learned_gate", "transformer.h.2.attn": "learned_gate", "transformer.h.3.attn": "topk_blocks"}
    inputs = model_inputs("gpt2", length=40)
    out = run_model(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = hf_sparse.load_patched(tf.GPT2LMHeadModel, str(tmp_path)).eval()
    assert {k: v.to_dict() for k, v in hf_sparse.patched_modules(loaded).items()} == \
        {k: v.to_dict() for k, v in patched.items()}
    assert sorted(gates(loaded)) == sorted(gates(model))
    assert torch.equal(run_model(loaded, inputs), out)
