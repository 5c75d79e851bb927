"""Run configs: every shipped YAML loads and round-trips; dotted overrides; bad configs fail fast with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hf_sparse.lab.finetune import ConfigError, RunConfig, apply_overrides, get_task, task_names

#: run configs of fine-tuning tasks (accelerate, analysis, bench and study configs have their own schemas and tests)
CONFIGS = sorted(p for p in Path(__file__).resolve().parents[3].glob("configs/*/*.yaml")
                 if p.parent.name not in ("accelerate", "analysis", "bench", "study"))


#: config folders whose name is not their task's (a variant of the task's data)
FOLDER_TASK = {"sentiment_long": "sentiment", "summarization_long": "summarization"}


def test_shipped_configs_cover_the_tasks_and_patterns():
    names = {f"{p.parent.name}/{p.stem}" for p in CONFIGS}
    assert {"sentiment/dense", "sentiment/sliding_window", "sentiment/bigbird", "sentiment/strided",
            "image/dense", "image/local_2d", "image/strided", "translation/dense", "translation/sliding_window",
            "translation/gpt2_sliding_window", "summarization/dense", "summarization/sliding_window"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_loads_and_round_trips(path):
    cfg = RunConfig.load(path)
    assert cfg.task == FOLDER_TASK.get(path.parent.name, path.parent.name)
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
    assert RunConfig.from_dict(yaml.safe_load(path.read_text())) == cfg
    sparse = cfg.sparse_config()
    # dense runs have no sparse section; learned_gate loads a checkpoint that carries its own sparse settings
    assert (sparse is None) == (path.stem.split("_")[0] == "dense" or path.stem == "learned_gate")
    if path.stem == "learned_gate":
        assert "checkpoints" in cfg.model.name_or_path
    if sparse is not None:  # the name ends with the pattern (a model prefix may precede it: gpt2_sliding_window)
        assert path.stem == sparse.pattern.name or path.stem.endswith("_" + sparse.pattern.name)


def test_dotted_overrides():
    path = Path(__file__).resolve().parents[3] / "configs/sentiment/sliding_window.yaml"
    cfg = RunConfig.load(path, ["--train.epochs", "2", "--sparse.options.window", "8", "--data.max_train_samples=64",
                                "--model.config", "{hidden_dropout_prob: 0.2}", "--train.learning_rate", "1e-4"])
    assert (cfg.train.epochs, cfg.data.max_train_samples, cfg.train.learning_rate) == (2, 64, 1e-4)
    assert cfg.sparse_config().pattern.window == 8 and cfg.sparse_config().pattern.num_global == 1
    assert cfg.model.config == {"hidden_dropout_prob": 0.2}
    assert RunConfig.load(path, ["--sparse", "null"]).sparse is None
    dense = Path(__file__).resolve().parents[3] / "configs/sentiment/dense.yaml"
    made_sparse = RunConfig.load(dense, ["--sparse.pattern", "strided", "--sparse.options.stride", "4"])
    assert made_sparse.sparse_config().pattern.stride == 4
    assert apply_overrides({"a": {"b": 1}}, ["--a.c", "[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


@pytest.mark.parametrize("overrides, message", [
    (["--train.epoch", "1"], r"unknown config key 'train.epoch' \(did you mean 'train.epochs'\?\)"),
    (["--optimizer", "sgd"], r"unknown config key 'optimizer'"),
    (["--train.epochs", "three"], r"config key 'train.epochs' must be int, got str: 'three'"),
    (["--train.batch_size", "true"], r"config key 'train.batch_size' must be int, got bool"),
    (["--train.learning_rate", "fast"], r"config key 'train.learning_rate' must be float"),
    (["--data.max_train_samples", "0"], r"'data.max_train_samples' must be > 0 or null"),
    (["--train.mixed_precision", "fp8"], r"train.mixed_precision must be one of no, bf16, fp16"),
    (["--train.lr_scheduler", "triangle"], r"train.lr_scheduler 'triangle' is unknown"),
    (["--sparse.pattern", "slidng_window"], r"sparse: unknown sparse pattern 'slidng_window'"),
    (["--sparse.options.window", "-1"], r"sparse: sliding_window: window must be >= 1"),
    (["--sparse.backend", "magic"], r"unknown backend 'magic'"),
    (["--model", "minilm"], r"model must be a mapping"),
    (["--train.epochs"], r"override --train.epochs has no value"),
])
def test_bad_configs_fail_with_one_line(overrides, message):
    _fails_with_one_line("sentiment/sliding_window", overrides, message)


@pytest.mark.parametrize("overrides, message", [
    (["--sparse.encoder.pattern", "sliding_window"], r"per-part settings take only the keys encoder / decoder, got also backend"),
    (["--sparse", "{encoder: {pattern: slidng}}"], r"sparse.encoder: unknown sparse pattern 'slidng'"),
    (["--sparse", "{decoder: {pattern: sliding_window, options: {window: 0}}}"],
     r"sparse.decoder: sliding_window: window must be >= 1"),
    (["--sparse", "{encoder: {pattern: sliding_window, backend: magic}}"], r"sparse.encoder: unknown backend 'magic'"),
    (["--generation.num_beams", "0"], r"'generation.num_beams' must be > 0"),
    (["--generation.max_new_tokens", "-3"], r"'generation.max_new_tokens' must be > 0 or null"),
    (["--generation.beams", "2"], r"unknown config key 'generation.beams'"),
    (["--data.max_target_length", "0"], r"'data.max_target_length' must be > 0"),
    (["--data.language_pair", "english"], r"data.language_pair: language pair 'english' must look like 'en-de'"),
])
def test_bad_seq2seq_configs_fail_with_one_line(overrides, message):
    _fails_with_one_line("translation/sliding_window", overrides, message)


def test_per_part_sparse_overrides():
    path = Path(__file__).resolve().parents[3] / "configs/translation/dense.yaml"
    cfg = RunConfig.load(path, ["--sparse.encoder.pattern", "sliding_window", "--sparse.encoder.options.window", "3",
                                "--sparse.decoder", "{pattern: strided, options: {stride: 2}}"])
    parts = cfg.sparse_parts()
    assert set(parts) == {"encoder", "decoder"} and parts["encoder"].pattern.window == 3
    assert parts["decoder"].pattern.name == "strided" and cfg.sparse_config() == parts["encoder"]
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
    only_decoder = RunConfig.load(path, ["--sparse", "{encoder: null, decoder: {pattern: sliding_window}}"])
    assert list(only_decoder.sparse_parts()) == ["decoder"]
    shared = RunConfig.load(path.with_name("sliding_window.yaml"), ["--sparse.options.window", "2"])
    assert list(shared.sparse_parts()) == ["all"] and shared.sparse_config().pattern.window == 2


def _fails_with_one_line(config: str, overrides: list[str], message: str) -> None:
    path = Path(__file__).resolve().parents[3] / "configs" / f"{config}.yaml"
    with pytest.raises(ConfigError, match=message) as info:
        RunConfig.load(path, overrides)
    assert "\n" not in str(info.value)


def test_unknown_task_and_missing_file(tmp_path):
    assert {"sentiment", "image", "translation", "summarization"} <= set(task_names())
    with pytest.raises(ConfigError, match=r"unknown task 'poetry'; choose one of: .*sentiment"):
        get_task("poetry")
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        RunConfig.load(tmp_path / "list.yaml")
