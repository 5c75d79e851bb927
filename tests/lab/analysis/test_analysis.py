"""Attention-mass recall against hand computation, the dense capture against the model's own attention
weights, pictures, and the analyze / train_gate commands end to end on tiny models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import torch

from hf_sparse.capture import CapturedAttention, capture_attention
from hf_sparse.lab.analysis import pictures as viz_heads
from hf_sparse.lab.analysis.recall import BlockOracle, analyze, attention_recall
from hf_sparse.patterns import make_pattern
from tests.helpers.models import model_inputs, tiny_model

ROOT = Path(__file__).resolve().parents[3]


def _constructed(length, key_mask=None):
    """One head whose every query row has probabilities proportional to 1, 2, ..., length (q = 1, k_j = log j,
    scale 1)."""
    q = torch.ones(1, 1, length, 1)
    k = torch.log(torch.arange(1, length + 1, dtype=torch.float32)).view(1, 1, length, 1)
    return CapturedAttention(name="attn", layer=0, module=torch.nn.Identity(), query=q, key=k, value=k,
                             attention_mask=key_mask, scale=1.0, causal=False)


def test_recall_and_density_equal_hand_computed_values():
    window = {"w": make_pattern("sliding_window", window=1)}
    cap = _constructed(4)  # rows: p = [.1, .2, .3, .4]; window 1 keeps .3, .6, .9, .7 of them
    torch.testing.assert_close(cap.dense_probs()[0, 0, 2], torch.tensor([0.1, 0.2, 0.3, 0.4]))
    table, _ = analyze([cap], window, picture_index=None)
    assert table.rows[0]["recall"] == pytest.approx((0.3 + 0.6 + 0.9 + 0.7) / 4)
    assert table.rows[0]["density"] == pytest.approx(10 / 16)
    # the last query is padding: left out of both averages
    table, _ = analyze([cap], window, query_mask=torch.tensor([[1, 1, 1, 0]]), picture_index=None)
    assert table.rows[0]["recall"] == pytest.approx((0.3 + 0.6 + 0.9) / 3)
    # the last key is padding too: rows are p = [1, 2, 3] / 6 over the real keys
    key_mask = torch.tensor([True, True, True, False]).view(1, 1, 1, 4)
    table, _ = analyze([_constructed(4, key_mask)], window, query_mask=torch.tensor([[1, 1, 1, 0]]), picture_index=None)
    assert table.rows[0]["recall"] == pytest.approx((3 / 6 + 1 + 5 / 6) / 3)
    assert table.rows[0]["density"] == pytest.approx(7 / 9)


def test_block_oracle_and_topk_recall_by_hand():
    cap = _constructed(6)  # p = j / 21; key blocks of 2 hold 3/21, 7/21, 11/21
    patterns = {"oracle": BlockOracle(block_size=2, k=1, num_local_blocks=1, num_global=0),
                "topk": make_pattern("topk_blocks", block_size=2, k=1, num_global=0)}
    table, _ = analyze([cap], patterns, picture_index=None)
    recall = {r["pattern"]: r["recall"] for r in table.rows}
    # oracle: query block 0 keeps its own block and block 2 (3 + 11), blocks 1 and 2 keep blocks 1 + 2 (18)
    assert recall["oracle"] == pytest.approx((14 + 18 + 18) / 63)
    # topk scores q·mean(k) = mean log j per block: also blocks 2 then 1 ranked first
    assert recall["topk"] == pytest.approx(recall["oracle"])


@pytest.mark.parametrize("family", ["bert", "gpt2", "vit"])
def test_dense_recall_is_exactly_one_and_captured_probs_equal_eager_attention(family):
    model = tiny_model(family)
    inputs = model_inputs(family, length=40, pad_from=31)
    table = attention_recall(model, inputs, {"dense": make_pattern("dense")})
    assert len(table.rows) == 2 * 4 and all(r["recall"] == 1.0 and r["density"] == 1.0 for r in table.rows)
    captures = capture_attention(model, inputs)
    assert model.config._attn_implementation == "sdpa", "the capture restores the attention implementation"
    model.set_attn_implementation("eager")  # Transformers' own attention, which returns its probabilities
    with torch.no_grad():
        weights = model(**inputs, output_attentions=True).attentions
    for cap, layer_weights in zip(captures, weights, strict=True):
        torch.testing.assert_close(cap.dense_probs(), layer_weights.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["bert", "gpt2", "vit"])
def test_analyze_tables_and_pictures_on_each_family(family, tmp_path):
    model = tiny_model(family)
    inputs = model_inputs(family, length=64, pad_from=50)
    patterns = {"window": make_pattern("sliding_window", window=4), "topk": make_pattern("topk_blocks", block_size=8, k=1),
                "bigbird": make_pattern("bigbird", block_size=8, num_random_blocks=1)}
    if family == "vit":
        patterns["local_2d"] = make_pattern("local_2d", window=1)
    table, pictures = analyze(capture_attention(model, inputs), patterns, query_mask=inputs.get("attention_mask"))
    assert table.labels() == list(patterns) and len(table.rows) == len(patterns) * 2 * 4
    assert all(0.0 < r["recall"] < 1.0 and 0.0 < r["density"] < 1.0 for r in table.rows)
    side = 64 if family != "vit" else 33  # example 0 is unpadded; 65 ViT tokens pool 2x2 to 33 cells
    for label in patterns:
        assert [p.mass.shape for p in pictures[label]] == [(4, side, side)] * 2
        viz_heads.plot_kept_heads(pictures[label], tmp_path / f"{label}.png", title=label)
        viz_heads.plot_recall_heatmap(table, label, tmp_path / f"r_{label}.png")
        image = mpimg.imread(tmp_path / f"{label}.png")
        assert image.shape[0] > 150 and image[..., :3].std() > 0.05
    text = table.format()
    assert text.splitlines()[0].split()[:4] == ["pattern", "density", "recall", "worst"]
    assert len(text.splitlines()) == 2 + len(patterns)


def _script(name):
    return importlib.import_module({"analyze": "hf_sparse.lab.analysis.__main__",
                                    "train_gate": "hf_sparse.lab.analysis.train_gate"}[name])


TINY_BERT = "{num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 4, intermediate_size: 64, vocab_size: 120}"


@pytest.mark.slow
def test_train_gate_then_analyze_commands(tmp_path, capsys):
    gate_dir, out = tmp_path / "gate", tmp_path / "analysis"
    record = _script("train_gate").main([
        "--model", "bert", "--model_config", TINY_BERT, "--data", "random", "--seq_len", "64", "--train_sequences", "4",
        "--eval_sequences", "2", "--batch_size", "2", "--steps", "3", "--block_size", "8", "--out_dir", str(gate_dir)])
    assert len(record["history"]) == 3 and [s["pattern"] for s in record["held_out"]] == \
        ["topk_blocks", "learned_gate", "block_oracle"]
    checkpoint = gate_dir / "checkpoints" / "model"
    assert (checkpoint / "model.safetensors").exists() and (gate_dir / "metrics.json").exists()

    result = _script("analyze").main([
        "--model", str(checkpoint), "--data", "random", "--seq_len", "64", "--num_sequences", "2", "--block_size", "8",
        "--densities", "[0.25, 0.5]", f"--out_dir={out}"])
    printed = capsys.readouterr().out
    families = ["sliding_window", "bigbird", "topk_blocks", "learned_gate", "block_oracle"]
    labels = ["dense"] + [f"{f}@{d}" for d in (0.25, 0.5) for f in families]
    assert [s["pattern"] for s in result["summary"]] == labels
    for label in labels:
        assert label in printed
    rows = (out / "recall.csv").read_text().splitlines()
    assert len(rows) == 1 + len(labels) * 2 * 4
    assert json.loads((out / "recall.json").read_text())["settings"]["block_size"] == 8
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "kept_learned_gate_at_0.25.png" in pngs and "recall_vs_density.png" in pngs and len(pngs) == 11
    summary = {s["pattern"]: s for s in result["summary"]}
    for density in (0.25, 0.5):  # routed patterns at one budget keep the same number of pairs
        for family in families[3:]:
            assert summary[f"{family}@{density}"]["density"] == pytest.approx(summary[f"topk_blocks@{density}"]["density"])


def test_analyze_rejects_unknown_settings():
    with pytest.raises(ValueError, match=r"unknown config key 'windw'; valid keys here: model, model_config, data"):
        _script("analyze").main(["--windw", "3"])
