"""hf-sparse bench-generate on tiny settings: structure, cache-size ratios and the generated tokens (no timings)."""

import csv
import json

import pytest
import torch

from hf_sparse.bench.generate import GenerateBenchConfig, build_model, main, row_specs
from hf_sparse.cli import COMMANDS
from hf_sparse.cli.settings import ConfigError

TINY = ["--prompt_tokens", "24", "--new_tokens", "40", "--checkpoints", "[10, 40]", "--windows", "[4, 8]",
        "--num_global", "1", "--warmup_tokens", "2", "--record_tokens", "true", "--threads", "1",
        "--model_config", "{n_layer: 2, n_head: 4, n_embd: 32, vocab_size: 120, initializer_range: 0.5}"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_generate")
    assert main([*TINY, "--output_dir", str(out)]) == 0
    return out, json.loads((out / "bench_generate.json").read_text())


def test_rows_and_files(results):
    out, data = results
    assert "bench-generate" in COMMANDS
    assert data["command"].startswith("hf-sparse bench-generate") and data["machine"]["cpu_count"]
    rows = data["rows"]
    assert [r["row"] for r in rows] == ["dense", "sliding_window(4)", "sliding_window(8)"]
    assert all(r["status"] == "ok" and r["timing"] == "interleaved" for r in rows)
    for row in rows:
        assert [p["generated"] for p in row["checkpoints"]] == [10, 40]
        assert all(p["tokens_per_s"] > 0 and p["cached_positions"] == 24 + p["generated"] for p in row["checkpoints"])
        assert row["peak_rss_mb"] >= 0 and row["prefill_s"] > 0
    assert rows[0]["cache_layers"] == ["DynamicLayer"] and rows[1]["cache_layers"] == ["WindowCacheLayer"]
    with (out / "bench_generate.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert len(lines) == 6 and {line["generated"] for line in lines} == {"10", "40"}


def test_window_cache_size_against_dense(results):
    _, data = results
    dense = {p["generated"]: p["cache_bytes"] for p in data["rows"][0]["checkpoints"]}
    per_position = dense[40] / (24 + 40)                        # bytes of one position over all layers, k and v
    assert dense[10] == per_position * (24 + 10)                # dense grows with the sequence
    for row in data["rows"][1:]:
        window = row["window"]
        for point in row["checkpoints"]:
            assert point["cache_bytes"] <= (window + 1 + 1) * per_position     # window + global + the newest key
            assert point["cache_ratio"] <= (window + 1 + 1) / (24 + point["generated"])
            assert point["speedup"] > 0


@pytest.mark.parametrize("index", [0, 1, 2])
def test_generated_tokens_equal_the_no_cache_forward(results, index):
    _, data = results
    cfg = GenerateBenchConfig(prompt_tokens=24, new_tokens=40, checkpoints=[10, 40], windows=[4, 8], num_global=1,
                              model_config=json.loads(json.dumps(data["settings"]["model_config"])))
    spec = row_specs(cfg)[index]
    row = data["rows"][index]
    model, prompt = build_model(spec)
    assert prompt[0].tolist() == row["prompt"]
    seq = torch.tensor([row["prompt"] + row["tokens"]])
    with torch.no_grad():
        ref = model(seq[:, :-1], use_cache=False).logits[:, 23:].argmax(-1)
    assert torch.equal(ref[0], seq[0, 24:]) and len(set(row["tokens"])) > 3


@pytest.mark.parametrize("override,match", [
    (["--checkpoints", "[0]"], "checkpoints must be"), (["--new_tokens", "0"], "new_tokens must be"),
    (["--windows", "[0]"], "windows must be"), (["--windows", "[]", "--dense", "false"], "nothing to run"),
])
def test_bad_settings_raise_one_line(override, match):
    with pytest.raises((ValueError, ConfigError), match=match) as info:
        main(override)
    assert "\n" not in str(info.value)


def test_rows_one_after_the_other(tmp_path):
    argv = [*TINY, "--windows", "[4]", "--new_tokens", "12", "--checkpoints", "[5, 12]", "--chunk_tokens", "5",
            "--interleave", "false", "--output_dir", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "bench_generate.json").read_text())["rows"]
    assert [(r["row"], r["timing"], r["status"]) for r in rows] == [("dense", "alone", "ok"),
                                                                     ("sliding_window(4)", "alone", "ok")]
    assert [p["generated"] for p in rows[1]["checkpoints"]] == [5, 12] and len(rows[1]["tokens"]) == 13
