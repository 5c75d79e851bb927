"""hf-sparse bench-model (hf_sparse.bench.model) in quick mode on tiny shapes: JSON/CSV fields, one row per case, ratios from times."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from hf_sparse.bench import model as bench_model
from hf_sparse.kernels import backend_names

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    return bench_model


def _read(out: Path):
    data = json.loads((out / "bench_model.json").read_text())
    with (out / "bench_model.csv").open() as handle:
        return data, list(csv.DictReader(handle))


@pytest.mark.slow
def test_quick_run_writes_one_row_per_case_with_ratios_from_the_times(tmp_path):
    bench = _load_script()
    args = ["--quick", "true", "--models", "[bert, gpt2, vit]", "--lengths", "[64]", "--image_sizes", "[32]",
            "--patterns", "[sliding_window, local_2d]", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path),
            "--malloc_mmap_threshold_mb", "32", "--malloc_trim_threshold_mb", "-1"]
    proc = subprocess.run([sys.executable, "-m", "hf_sparse.cli", "bench-model", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data, csv_rows = _read(tmp_path)
    rows = data["rows"]

    cases = {(r["model"], r["mode"], r["tokens"], r["pattern"]) for r in rows}
    want = {(m, mode, tokens, p) for m, tokens, sparse in (("bert", 64, "sliding_window"), ("gpt2", 64, "sliding_window"),
                                                           ("vit", 65, "local_2d"))
            for mode in ("inference", "train") for p in ("dense", sparse)}
    assert cases == want and len(rows) == len(want) == len(csv_rows)
    assert list(csv_rows[0]) == bench.CSV_FIELDS
    assert data["meta"]["machine"]["torch"] and data["config"]["quick"] is True
    assert (data["config"]["malloc_mmap_threshold_mb"], data["config"]["malloc_trim_threshold_mb"]) == (32, -1)
    for row, line in zip(rows, csv_rows, strict=True):
        assert row["status"] == "ok", row
        assert row["timing"] == "interleaved", "dense and sparse rows of a case step in turn"
        assert len(row["times_s"]) == 2 and row["time_s"] == statistics.median(row["times_s"])
        assert row["tokens_per_s"] == round(row["tokens"] / row["time_s"], 1)
        assert row["peak_mem_mb"] >= 0 and row["memory_method"].startswith(("VmHWM", "ru_maxrss"))
        assert row["alloc_peak_mb"] > 0, "the cold step allocates activations (and, sparse, its plan)"
        assert float(line["alloc_peak_mb"]) == row["alloc_peak_mb"]
        dense = next(r for r in rows if r["pattern"] == "dense" and (r["model"], r["mode"]) == (row["model"], row["mode"]))
        assert row["speedup_vs_dense"] == round(dense["time_s"] / row["time_s"], 3)
        assert row["alloc_ratio_vs_dense"] == round(row["alloc_peak_mb"] / dense["alloc_peak_mb"], 3)
        assert float(line["speedup_vs_dense"]) == row["speedup_vs_dense"] and line["pattern"] == row["pattern"]
        if row["pattern"] == "dense":
            assert row["backends_used"] == ["sdpa"] and row["density"] == 1.0
        else:
            assert set(row["backends_used"]) <= set(backend_names()) and row["backends_used"]
            assert 0.0 < row["density"] < 0.5, "windows follow --density (1/8)"
    assert "speedup" in proc.stdout and "wrote" in proc.stdout  # the printed table


def test_rows_over_the_memory_budget_are_skipped_with_the_reason(tmp_path, capsys):
    bench = _load_script()
    code = bench.main(["--quick", "true", "--models", "[bert]", "--lengths", "[64]", "--patterns", "[sliding_window]",
                       "--modes", "[inference]", "--max_memory_gb", "0.01", "--out", str(tmp_path)])  # no row is started
    assert code == 0
    data, csv_rows = _read(tmp_path)
    assert [r["status"] for r in data["rows"]] == ["skipped", "skipped"] and len(csv_rows) == 2
    assert all("> budget 0.01 GB" in r["reason"] and r["speedup_vs_dense"] is None for r in data["rows"])
    assert "skipped: estimated" in capsys.readouterr().out
    with pytest.raises(ValueError, match="interleave must be true or false, got 'yes'"):
        bench.BenchConfig(interleave="yes")
    with pytest.raises(ValueError, match="unknown models"):
        bench.BenchConfig(models=["bart"])
    with pytest.raises(ValueError, match="mmap_threshold_mb must be in 1..32.*got 64"):
        bench.BenchConfig(malloc_mmap_threshold_mb=64, malloc_trim_threshold_mb=2047)


@pytest.mark.slow
def test_rows_that_do_not_fit_side_by_side_run_alone(tmp_path, monkeypatch):
    bench = _load_script()
    args = ["--quick", "true", "--models", "[bert]", "--lengths", "[64]", "--patterns", "[sliding_window]", "--modes",
            "[inference]", "--out", str(tmp_path)]
    monkeypatch.setattr(bench, "estimate_gb", lambda *a: 4.0)  # the budget is each forked child's RLIMIT_DATA:
    assert bench.main([*args, "--max_memory_gb", "6"]) == 0    # large enough for a pytest process's copy
    data, _ = _read(tmp_path)
    assert [(r["status"], r["timing"]) for r in data["rows"]] == [("ok", "alone")] * 2, "one row fits, two do not"
    assert bench.main([*args, "--interleave", "false", "--max_memory_gb", "8"]) == 0
    assert [r["timing"] for r in _read(tmp_path)[0]["rows"]] == ["alone"] * 2
    assert bench.main([*args, "--max_memory_gb", "8"]) == 0
    assert [r["timing"] for r in _read(tmp_path)[0]["rows"]] == ["interleaved"] * 2


def test_bench_configs_load_round_trip_and_flags_override_them(tmp_path):
    """Every ``configs/bench/*.yaml`` is a valid BenchConfig that survives YAML; command-line overrides win."""
    import dataclasses

    import yaml

    bench = _load_script()
    paths = sorted((ROOT / "configs" / "bench").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = bench.parse_config(["--config", str(path), "--max_memory_gb", "4"])
        again = tmp_path / path.name
        again.write_text(yaml.safe_dump(dataclasses.asdict(cfg)))
        assert bench.parse_config(["--config", str(again)]) == cfg
    long = bench.parse_config(["--config", str(ROOT / "configs/bench/bert_long.yaml"), "--repeats", "5",
                               "--malloc_trim_threshold_mb", "2047", "--max_memory_gb", "4"])
    assert (long.models, long.lengths, long.patterns, long.density) == (["bert"], [4096, 8192], ["sliding_window"], 0.125)
    assert (long.repeats, long.malloc_mmap_threshold_mb, long.malloc_trim_threshold_mb) == (5, 32, 2047)
    assert long.interleave is True
    assert bench.parse_config(["--interleave", "false", "--max_memory_gb", "4"]).interleave is False
    quick = bench.parse_config(["--quick", "true", "--repeats", "3", "--lengths", "[96]", "--max_memory_gb", "4"])
    assert (quick.lengths, quick.image_sizes, quick.repeats, quick.threads) == ([96], [32, 64], 3, 1), \
        "quick shrinks the shapes, overrides on the command line still win"
    with pytest.raises(ValueError, match=r"unknown config key 'image-sizes' \(did you mean 'image_sizes'\?\)"):
        bench.parse_config(["--image-sizes", "[896]"])
