"""Long inputs: extend_positions / patch_model(max_positions=) on text models, larger images on ViT/DeiT."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers as tf

import hf_sparse
from hf_sparse.patterns import Local2D, MaskContext, allowed_matrix
from tests.helpers.explicit import explicit_copy
from tests.helpers.formulas import formula
from tests.helpers.models import minilm_path, model_inputs, run_model, tiny_model


def _table(model) -> torch.nn.Embedding:
    for name in ("position_embeddings", "wpe", "embed_positions"):
        found = [m for n, m in model.named_modules() if n.endswith(name) and isinstance(m, torch.nn.Embedding)]
        if found:
            return found[0]
    raise AssertionError("no position table")


# family -> (reserved rows before position 0, does config.max_position_embeddings count those rows)
OFFSETS = {"bert": (0, False), "roberta": (2, True), "distilbert": (0, False), "gpt2": (0, False),
           "bart": (2, False)}


@pytest.mark.parametrize("family", sorted(OFFSETS))
def test_tables_are_tiled_short_inputs_unchanged_long_inputs_run_and_reload(family, tmp_path):
    model = tiny_model(family)
    offset, config_counts_offset = OFFSETS[family]
    old = _table(model).weight.detach().clone()
    short = model_inputs(family, length=40)
    before = run_model(model, short)
    hf_sparse.extend_positions(model, 700)

    new = _table(model).weight.detach()
    assert new.shape == (700 + offset, old.shape[1])
    rows = torch.arange(700)
    want = torch.cat([old[:offset], old[offset + rows % (old.shape[0] - offset)]])  # Longformer's copy
    assert torch.equal(new, want)
    assert model.config.max_position_embeddings == 700 + (offset if config_counts_offset else 0)
    if family == "gpt2":
        assert model.config.n_positions == 700
    for buffer in ("position_ids", "token_type_ids"):
        for module in model.modules():
            if buffer in module._buffers:
                assert module._buffers[buffer].shape == (1, 700 + offset)
    assert torch.equal(run_model(model, short), before)  # pretrained rows unchanged

    long = model_inputs(family, length=650, pad_from=600)
    out = run_model(model, long)
    assert out.shape[1] == (23 if family == "bart" else 650) and torch.isfinite(out).all()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert torch.equal(run_model(loaded, long), out)


@pytest.mark.slow
def test_minilm_extended_to_2048_runs_a_padded_sparse_batch_and_reloads(tmp_path):
    model = tf.BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    pretrained = model.bert.embeddings.position_embeddings.weight.detach().clone()
    assert pretrained.shape[0] == 512
    hf_sparse.extend_positions(model, 2048, tokenizer=tokenizer)
    hf_sparse.patch_model(model, "sliding_window", window=64, num_global=1)

    table = model.bert.embeddings.position_embeddings.weight.detach()
    assert table.shape == (2048, 384)
    assert torch.equal(table[:512], pretrained)
    assert torch.equal(table[1536:], pretrained)
    assert model.config.max_position_embeddings == 2048 and tokenizer.model_max_length == 2048
    assert model.bert.embeddings.position_ids.shape == model.bert.embeddings.token_type_ids.shape == (1, 2048)

    texts = ["the long review goes on and on " * 400, "a short and sweet one " * 60]
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=2048, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 2048) and 200 < int(batch["attention_mask"][1].sum()) < 2048
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert set(hf_sparse.last_backends(model).values()) - {None}, "the sparse kernels must have run"
    # the padded row equals that example run alone
    kept = int(batch["attention_mask"][1].sum())
    with torch.no_grad():
        alone = model(**{k: v[1:, :kept] for k, v in batch.items()}).logits
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=0)

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = hf_sparse.load_patched(tf.BertForSequenceClassification, str(tmp_path)).eval()
    assert loaded.config.max_position_embeddings == 2048
    assert tf.AutoTokenizer.from_pretrained(tmp_path).model_max_length == 2048
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, logits)


def test_patch_model_max_positions_extends_and_validates_before_patching(tmp_path):
    model = tiny_model("bert")
    hf_sparse.patch_model(model, "sliding_window", window=4, max_positions=600)
    assert model.config.max_position_embeddings == 600 and hf_sparse.patched_modules(model)
    inputs = model_inputs("bert", length=580, pad_from=500)
    out = run_model(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = hf_sparse.load_patched(tf.BertForSequenceClassification, str(tmp_path)).eval()
    assert torch.equal(run_model(loaded, inputs), out)

    fresh = tiny_model("bert")
    with pytest.raises(ValueError, match=r"max_positions=100 would shrink .*256 positions.*>= 256"):
        hf_sparse.patch_model(fresh, "sliding_window", window=4, max_positions=100)
    assert not hf_sparse.patched_modules(fresh) and fresh.config._attn_implementation == "sdpa"


def test_extension_errors_name_the_value():
    bert = tiny_model("bert")
    for bad in (1024.0, "2048", True, None):
        with pytest.raises(TypeError, match="max_positions|exactly one"):
            hf_sparse.extend_positions(bert, bad)
    with pytest.raises(ValueError, match="max_positions must be >= 1, got 0"):
        hf_sparse.extend_positions(bert, 0)
    with pytest.raises(ValueError, match="would shrink bert.embeddings.position_embeddings"):
        hf_sparse.extend_positions(bert, 255)
    with pytest.raises(TypeError, match="exactly one"):
        hf_sparse.extend_positions(bert, 512, image_size=64)
    with pytest.raises(ValueError, match="image_size= needs an image model.*'bert'"):
        hf_sparse.extend_positions(bert, image_size=64)
    with pytest.raises(ValueError, match="'marian'.*no learned absolute position table"):
        hf_sparse.extend_positions(tiny_model("marian"), 1024)
    sinusoidal = tf.DistilBertModel(tf.DistilBertConfig(vocab_size=120, dim=32, n_layers=1, n_heads=4, hidden_dim=64,
                                                        sinusoidal_pos_embds=True))
    with pytest.raises(ValueError, match="'distilbert'.*no learned absolute position table"):
        hf_sparse.extend_positions(sinusoidal, 1024)
    vit = tiny_model("vit")
    with pytest.raises(ValueError, match="'vit' has a 2-D patch position table.*image_size="):
        hf_sparse.extend_positions(vit, 1024)
    with pytest.raises(ValueError, match="image_size=50 is not a multiple of the patch size"):
        hf_sparse.extend_positions(vit, image_size=50)
    with pytest.raises(ValueError, match="image_size=16 would shrink"):
        hf_sparse.extend_positions(vit, image_size=16)
    with pytest.raises(TypeError, match="image_size must be an int"):
        hf_sparse.extend_positions(vit, image_size=64.0)
    assert bert.config.max_position_embeddings == 256 and vit.config.image_size == 32  # nothing changed


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_relative_and_rotary_position_models_need_nothing(family):
    model = tiny_model(family)
    inputs = model_inputs(family)
    before, config = run_model(model, inputs), model.config.to_dict()
    tokenizer = type("Tok", (), {"model_max_length": 512})()
    assert hf_sparse.extend_positions(model, 4096, tokenizer=tokenizer) is model
    assert torch.equal(run_model(model, inputs), before) and model.config.to_dict() == config
    assert tokenizer.model_max_length == 4096


def _vit_explicit(model, grid, prefix, window):
    targets = list(hf_sparse.patched_modules(model))
    options = {"window": window, "grid": grid, "num_prefix": prefix}
    clean = hf_sparse.unpatch_model(copy.deepcopy(model))
    return explicit_copy(clean, lambda q, k, off, causal: formula("local_2d", q, k, off, causal, **options), targets)


def _logits(model, pixels, **kwargs):
    with torch.no_grad():
        return model(pixel_values=pixels, output_hidden_states=True, **kwargs).hidden_states[-1]


@pytest.mark.parametrize("family", ["vit", "deit"])
def test_vit_at_twice_the_image_size_with_local_2d_equals_reference_and_explicit_oracle(family):
    model = tiny_model(family)  # vit: 32 px / patch 4 = 8x8 grid, deit: 24 px = 6x6; run at 2x
    size, prefix = (64, 1) if family == "vit" else (48, 2)
    grid = (size // 4, size // 4)
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    dense = _logits(model, pixels, interpolate_pos_encoding=True)
    reference = hf_sparse.patch_model(copy.deepcopy(model), "local_2d", window=1, backend="reference")
    hf_sparse.patch_model(model, "local_2d", window=1)
    got = _logits(model, pixels, interpolate_pos_encoding=True)
    assert got.shape[1] == grid[0] * grid[1] + prefix
    torch.testing.assert_close(got, _logits(reference, pixels, interpolate_pos_encoding=True), atol=1e-5, rtol=0)
    oracle = _vit_explicit(model, grid, prefix, window=1)
    torch.testing.assert_close(got, _logits(oracle, pixels, interpolate_pos_encoding=True), atol=1e-5, rtol=0)
    assert (got - dense).abs().max() > 1e-4, "local_2d must change the output"
    # resizing the table once gives the same model as interpolating at every call
    hf_sparse.extend_positions(model, image_size=size)
    assert model.config.image_size == size
    torch.testing.assert_close(_logits(model, pixels), got, atol=1e-5, rtol=0)


def test_non_square_vit_grows_with_image_size_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = tf.ViTForImageClassification(tf.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=(16, 32),
        patch_size=4, num_labels=3)).eval()
    hf_sparse.patch_model(model, "local_2d", window=1)
    processor = tf.ViTImageProcessor(size={"height": 16, "width": 32})
    hf_sparse.extend_positions(model, image_size=(32, 64), image_processor=processor)
    assert model.config.image_size == [32, 64] and processor.size == {"height": 32, "width": 64}
    assert model.vit.embeddings.position_embeddings.shape == (1, 1 + 8 * 16, 32)
    pixels = torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(4))
    got = _logits(model, pixels)
    torch.testing.assert_close(got, _logits(_vit_explicit(model, (8, 16), 1, 1), pixels), atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    loaded = hf_sparse.load_patched(tf.ViTForImageClassification, str(tmp_path)).eval()
    assert torch.equal(_logits(loaded, pixels), got)


def test_local_2d_infers_the_grid_scaled_from_the_model_grid():
    pattern = Local2D(window=1)

    def grid_for(tokens, model_grid):
        return pattern.resolve(MaskContext.for_length(tokens, image_grid=model_grid, num_prefix=1))[0]

    assert grid_for(1 + 16 * 32, (8, 16)) == (16, 32)
    assert grid_for(1 + 28 * 28, (14, 14)) == (28, 28)
    assert grid_for(1 + 56 * 56, (14, 14)) == (56, 56)
    assert grid_for(1 + 12 * 12, (4, 8)) == (12, 12)  # not the model's aspect ratio, but square
    with pytest.raises(ValueError, match=r"64 tokens.*grid=\(rows, cols\).*extend_positions"):
        grid_for(64, (4, 8))
    np.testing.assert_array_equal(
        allowed_matrix(pattern, MaskContext.for_length(1 + 8 * 16, image_grid=(4, 8), num_prefix=1)).numpy(),
        formula("local_2d", 1 + 8 * 16, grid=(8, 16), num_prefix=1, window=1))
