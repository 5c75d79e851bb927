"""patch_model on real Transformers models: equality with explicit-mask oracles, padding, generation,
reversibility, and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hf_sparse
from hf_sparse.integration import get_state
from hf_sparse.patterns import MaskContext, allowed_matrix, make_pattern
from tests.helpers.explicit import explicit_copy
from tests.helpers.formulas import formula
from tests.helpers.models import model_inputs, run_model, tiny_model

FAMILIES_DENSE = ["minilm", "bert", "gpt2", "vit", "t5", "bart", "roberta", "distilbert", "deit", "marian", "llama"]


_run = run_model


@pytest.mark.parametrize("family", FAMILIES_DENSE)
def test_dense_pattern_equals_unpatched_and_unpatch_is_bit_identical(family):
    model = tiny_model(family)
    inputs = model_inputs(family)
    before = _run(model, inputs)
    hf_sparse.patch_model(model, "dense")
    assert hf_sparse.patched_modules(model), "some module must be patched"
    patched = _run(model, inputs)
    assert set(hf_sparse.last_backends(model).values()) - {None}, "the sparse path must have run"
    torch.testing.assert_close(patched, before, atol=1e-5, rtol=0)
    hf_sparse.unpatch_model(model)
    assert torch.equal(_run(model, inputs), before)
    assert model.config._attn_implementation == "sdpa"
    assert not hasattr(model.config, "hf_sparse")
    assert not hf_sparse.patched_modules(model)


def _formula_fn(name, options):
    def mask_fn(q_len, kv_len, q_offset, causal):
        return formula(name, q_len, kv_len, q_offset=q_offset, causal=causal, **options)

    return mask_fn


def _package_fn(pattern):
    def mask_fn(q_len, kv_len, q_offset, causal):
        return allowed_matrix(pattern, MaskContext(q_len, kv_len, q_offset, causal)).numpy()

    return mask_fn


TEXT_PATTERNS = [
    ("sliding_window", {"window": 3}),
    ("sliding_window", {"window": 2, "num_global": 1}),
    ("block_local", {"block_size": 8}),
    ("strided", {"stride": 5, "window": 1}),
    ("dilated", {"window": 2, "dilation": 3}),
]


def _check_against_explicit(family, pattern, mask_fn, atol=1e-5, **patch_options):
    model = tiny_model(family)
    inputs = model_inputs(family)
    hf_sparse.patch_model(model, pattern)
    targets = list(hf_sparse.patched_modules(model))
    hf_sparse.unpatch_model(model)
    ref = explicit_copy(model, mask_fn, targets)
    hf_sparse.patch_model(model, pattern, **patch_options)
    got, want = _run(model, inputs), _run(ref, inputs)
    dense = _run(explicit_copy(model, lambda *a: np.ones((a[0], a[1]), bool), []), inputs)
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    assert (got - dense).abs().max() > 1e-4, "the pattern must change the output"
    return model, inputs


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5", "bart"])
@pytest.mark.parametrize("name,options", TEXT_PATTERNS)
def test_pattern_equals_explicit_mask_model(family, name, options):
    _check_against_explicit(family, make_pattern(name, **options), _formula_fn(name, options))


@pytest.mark.parametrize("family", ["bert", "gpt2", "t5"])
@pytest.mark.parametrize("name,options", [("random", {"num_random": 1, "block_size": 8}),
                                          ("bigbird", {"block_size": 4, "num_random_blocks": 1}),
                                          ("longformer", {"window": 2})])
def test_block_random_patterns_equal_explicit_mask_model(family, name, options):
    pattern = make_pattern(name, **options)
    _check_against_explicit(family, pattern, _package_fn(pattern))


FAST_PATTERNS = [("sliding_window", {"window": 3, "num_global": 1}), ("strided", {"stride": 5, "window": 1}),
                 ("bigbird", {"block_size": 4, "num_random_blocks": 1})]
FAST_COMBOS = [("blocksparse", family, *p) for family in ("bert", "gpt2", "t5", "bart") for p in FAST_PATTERNS] + [
    ("flex", family, *FAST_PATTERNS[0]) for family in ("bert", "gpt2", "t5")]


@pytest.mark.parametrize("backend,family,name,options", FAST_COMBOS)
def test_fast_backends_equal_explicit_mask_model(backend, family, name, options):
    """The fast kernels inside real models (padding, causal decoders, T5's position bias), block size 8."""
    pattern = make_pattern(name, **options)
    model, _ = _check_against_explicit(family, pattern, _package_fn(pattern), backend=backend,
                                       kernel_block_size=8)
    assert set(hf_sparse.last_backends(model).values()) == {backend}


def test_minilm_real_weights_sparse_equals_explicit():
    _check_against_explicit("minilm", make_pattern("sliding_window", window=4, num_global=1),
                            _formula_fn("sliding_window", {"window": 4, "num_global": 1}))


@pytest.mark.parametrize("family", ["vit", "deit"])
def test_local_2d_on_vision_models_equals_explicit(family):
    grid = (8, 8) if family == "vit" else (6, 6)
    prefix = 1 if family == "vit" else 2
    options = {"window": 1, "grid": grid, "num_prefix": prefix}
    model, _ = _check_against_explicit(family, make_pattern("local_2d", window=1), _formula_fn("local_2d", options))
    # the grid and prefix (class token; DeiT adds a distillation token) were inferred from the model's config
    states = [state for m in model.modules() if (state := get_state(m)) is not None]
    assert states and all((s.image_grid, s.num_prefix) == (grid, prefix) for s in states)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("name,options", TEXT_PATTERNS + [("bigbird", {"block_size": 8})])
def test_padding_stays_masked(family, name, options):
    """Padded keys never influence real tokens: changing the padding's content changes nothing, and for
    length-independent patterns each padded row equals the example run alone."""
    model = hf_sparse.patch_model(tiny_model(family), name, **options)
    inputs = model_inputs(family, pad_from=29)
    out = _run(model, inputs)
    noisy = dict(inputs, input_ids=inputs["input_ids"].clone())
    noisy["input_ids"][1, 29:] = 7
    torch.testing.assert_close(_run(model, noisy)[1, :29], out[1, :29], atol=1e-5, rtol=0)
    if name != "bigbird":  # bigbird's random blocks depend on the sequence length by design
        alone = {k: v[1:, :29] for k, v in inputs.items()}
        torch.testing.assert_close(out[1, :29], _run(model, alone)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["auto", "blocksparse"])
@pytest.mark.parametrize("name,options", [("sliding_window", {"window": 3}), ("strided", {"stride": 4, "window": 1})])
def test_gpt2_generate_matches_masked_dense_reference(name, options, backend):
    model = tiny_model("gpt2", seed=5)
    prompt = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                  output_scores=True)
    dense = model.generate(prompt, **kwargs)
    targets = [n for n, m in model.named_modules() if type(m).__name__ == "GPT2Attention"]
    ref = explicit_copy(model, _formula_fn(name, options), targets)
    hf_sparse.patch_model(model, name, backend=backend, kernel_block_size=4, **options)
    got = model.generate(prompt, **kwargs)
    want = ref.generate(prompt, **kwargs)
    assert got.sequences.shape == (2, 21)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.scores), torch.stack(want.scores), atol=1e-4, rtol=0)
    # the pattern matters once the context outgrows the window: later steps' scores differ from dense
    assert (torch.stack(got.scores)[-1] - torch.stack(dense.scores)[-1]).abs().max() > 1e-3


def test_two_models_patched_differently_in_one_process():
    a, b = tiny_model("bert"), tiny_model("bert")
    inputs = model_inputs("bert")
    before = _run(b, inputs)
    hf_sparse.patch_model(a, "sliding_window", window=2)
    hf_sparse.patch_model(b, "strided", stride=3, window=0)
    out_b = _run(b, inputs)
    hf_sparse.unpatch_model(a)
    torch.testing.assert_close(_run(b, inputs), out_b, atol=0, rtol=0)
    assert not torch.allclose(out_b, before)
    hf_sparse.unpatch_model(b)
    assert torch.equal(_run(b, inputs), before)


def _sharing_pair(family):
    """Two models built from ONE config object (Transformers keeps the object, it does not copy it)."""
    import transformers as tf

    if family == "bert":
        cfg = tf.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=256, num_labels=3)
        build = tf.BertForSequenceClassification
    else:
        cfg = tf.BartConfig(vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                            max_position_embeddings=256)
        build = tf.BartForConditionalGeneration
    torch.manual_seed(0)
    first = build(cfg).eval()
    torch.manual_seed(1)
    second = build(cfg).eval()
    assert first.config is second.config is cfg
    return cfg, first, second, build


@pytest.mark.parametrize("family", ["bert", "bart"])
def test_patching_one_of_two_models_sharing_a_config_leaves_the_other_alone(family, tmp_path):
    cfg, first, second, build = _sharing_pair(family)
    inputs = model_inputs(family)
    before_first, before_second = _run(first, inputs), _run(second, inputs)
    for _ in range(2):  # two patch/unpatch cycles, both exact
        hf_sparse.patch_model(first, "sliding_window", window=2, num_global=1)
        assert first.config.hf_sparse["rules"]
        assert not hasattr(cfg, "hf_sparse") and not hasattr(second.config, "hf_sparse")
        assert cfg._attn_implementation == second.config._attn_implementation == "sdpa"
        assert all(getattr(m, "config", cfg)._attn_implementation == "sdpa" for m in second.modules())
        # within the patched model, every module refers to the patched model's own config
        assert all(m.config is first.config for m in first.modules()
                   if isinstance(getattr(m, "config", None), type(cfg)))
        assert not torch.allclose(_run(first, inputs), before_first)
        assert torch.equal(_run(second, inputs), before_second)
        second.save_pretrained(tmp_path / "second")
        saved = json.loads((tmp_path / "second" / "config.json").read_text())
        assert "hf_sparse" not in saved
        with pytest.raises(ValueError, match="not saved from a patched model"):
            hf_sparse.load_patched(build, str(tmp_path / "second"))
        hf_sparse.unpatch_model(first)
        assert torch.equal(_run(first, inputs), before_first)
        assert first.config._attn_implementation == "sdpa" and not hasattr(first.config, "hf_sparse")
        assert torch.equal(_run(second, inputs), before_second)
    # the other model can be patched and unpatched in turn, the first one untouched
    hf_sparse.patch_model(second, "strided", stride=3, window=1)
    assert not hasattr(first.config, "hf_sparse") and not hasattr(cfg, "hf_sparse")
    assert torch.equal(_run(first, inputs), before_first)
    hf_sparse.unpatch_model(second)
    assert torch.equal(_run(second, inputs), before_second)


def test_layers_and_target_modules_select_a_subset():
    model = tiny_model("bart")
    hf_sparse.patch_model(model, "sliding_window", window=2, layers=[1])
    assert sorted(hf_sparse.patched_modules(model)) == ["model.decoder.layers.1.self_attn", "model.encoder.layers.1.self_attn"]
    hf_sparse.unpatch_model(model)
    hf_sparse.patch_model(model, "sliding_window", window=2, target_modules=r"model\.encoder\..*")
    hf_sparse.patch_model(model, "strided", stride=3, window=1, target_modules=["decoder.layers.0.self_attn"])
    patched = hf_sparse.patched_modules(model)
    assert sorted(patched) == ["model.decoder.layers.0.self_attn", "model.encoder.layers.0.self_attn",
                               "model.encoder.layers.1.self_attn"]
    assert patched["model.decoder.layers.0.self_attn"].pattern.name == "strided"


def test_save_and_reload_keeps_the_sparse_settings(tmp_path, minilm_dir):
    from transformers import BertForSequenceClassification

    model = tiny_model("minilm")
    hf_sparse.patch_model(model, "bigbird", block_size=8, num_random_blocks=1, layers=[0, 2, 4])
    hf_sparse.patch_model(model, "sliding_window", window=5, layers=[5])
    inputs = model_inputs("minilm")
    out = _run(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = hf_sparse.load_patched(BertForSequenceClassification, str(tmp_path)).eval()
    assert {k: v.to_dict() for k, v in hf_sparse.patched_modules(loaded).items()} == \
        {k: v.to_dict() for k, v in hf_sparse.patched_modules(model).items()}
    assert torch.equal(_run(loaded, inputs), out)
    plain = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    with pytest.raises(ValueError, match="not saved from a patched model"):
        hf_sparse.apply_saved_patch(plain)


def test_sparse_config_round_trips_json_and_yaml():
    cfg = hf_sparse.SparseConfig(pattern=make_pattern("local_2d", window=2, grid=(4, 4)) | make_pattern("dense"),
                                 backend="masked_sdpa", kernel_block_size=32, layers=[0, 2], target_modules=["attn"])
    assert hf_sparse.SparseConfig.from_json(cfg.to_json()) == cfg
    assert hf_sparse.SparseConfig.from_yaml(cfg.to_yaml()) == cfg
    short = hf_sparse.SparseConfig.from_yaml("pattern: strided\noptions: {stride: 8}\nbackend: auto\n")
    assert short.pattern == make_pattern("strided", stride=8)
    with pytest.raises(TypeError, match="unknown sparse config key.*windw"):
        hf_sparse.SparseConfig.from_dict({"pattern": "dense", "windw": 3})


def test_bad_input_errors_name_the_value():
    from transformers import LongformerConfig, LongformerModel

    bert = tiny_model("bert")
    with pytest.raises(ValueError, match="unknown sparse pattern 'nope'.*sliding_window"):
        hf_sparse.patch_model(bert, "nope")
    with pytest.raises(ValueError, match="window must be >= 1, got 0"):
        hf_sparse.patch_model(bert, "sliding_window", window=0)
    with pytest.raises(ValueError, match="block_size must be >= 1, got 0"):
        hf_sparse.patch_model(bert, "block_local", block_size=0)
    with pytest.raises(TypeError, match=r"unexpected option\(s\) stride"):
        hf_sparse.patch_model(bert, "sliding_window", stride=3)
    with pytest.raises(ValueError, match="'local_2d' needs an image model.*'bert'"):
        hf_sparse.patch_model(bert, "local_2d")
    with pytest.raises(ValueError, match="unknown backend 'cuda_magic'"):
        hf_sparse.patch_model(bert, "dense", backend="cuda_magic")
    with pytest.raises(ValueError, match="matches no self-attention module"):
        hf_sparse.patch_model(bert, "dense", target_modules=["nothing"])
    with pytest.raises(ValueError, match=r"layers=\[7\].*\[7\] that do not exist"):
        hf_sparse.patch_model(bert, "dense", layers=[7])
    with pytest.raises(ValueError, match="cross-attention"):
        hf_sparse.patch_model(tiny_model("bart"), "dense", target_modules=r".*encoder_attn")
    with pytest.raises(TypeError, match="SparseConfig and also window"):
        hf_sparse.patch_model(bert, hf_sparse.SparseConfig(make_pattern("dense")), window=3)
    longformer = LongformerModel(LongformerConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                  intermediate_size=64, attention_window=4))
    with pytest.raises(ValueError, match="model type 'longformer'.*AttentionInterface"):
        hf_sparse.patch_model(longformer, "dense")
    with pytest.raises(ValueError, match="expects a Transformers PreTrainedModel, got Linear"):
        hf_sparse.patch_model(torch.nn.Linear(2, 2), "dense")
    assert not hf_sparse.patched_modules(bert) and bert.config._attn_implementation == "sdpa"


def test_output_attentions_returns_the_sparse_weights():
    model = hf_sparse.patch_model(tiny_model("bert"), "sliding_window", window=2)
    with torch.no_grad():
        out = model(**model_inputs("bert", pad_from=None), output_attentions=True)
    allowed = torch.from_numpy(formula("sliding_window", 37, window=2))
    for layer in out.attentions:
        assert layer.shape == (2, 4, 37, 37)
        assert (layer[..., ~allowed] == 0).all()
        torch.testing.assert_close(layer.sum(-1), torch.ones(2, 4, 37))
