"""The one settings loader (hf_sparse.cli.settings) behind every command: each command's settings round-trip
YAML/JSON, a bad key is one line naming close matches / the valid keys, dotted overrides reach nested keys."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from hf_sparse import cli
from hf_sparse.bench.generate import GenerateBenchConfig
from hf_sparse.bench.kernels import KernelBenchConfig
from hf_sparse.bench.model import BenchConfig
from hf_sparse.cli.settings import ConfigError, build_dataclass, load_settings, parse_command, to_yaml
from hf_sparse.lab.analysis.__main__ import AnalyzeConfig
from hf_sparse.lab.analysis.train_gate import GateTrainConfig
from hf_sparse.lab.finetune import RunConfig
from hf_sparse.lab.study import StudyConfig

ROOT = Path(__file__).resolve().parents[2]

#: command -> (its settings class, a config file of the repository, or None for the defaults)
COMMANDS = {
    "finetune": (RunConfig, "configs/sentiment/sliding_window.yaml"),
    "study": (StudyConfig, "configs/study/default.yaml"),
    "bench-model": (BenchConfig, "configs/bench/bert_long.yaml"),
    "bench-kernels": (KernelBenchConfig, None),
    "bench-generate": (GenerateBenchConfig, None),
    "analyze": (AnalyzeConfig, "configs/analysis/minilm_rt.yaml"),
    "train-gate": (GateTrainConfig, "configs/analysis/gate_minilm_rt.yaml"),
}


def test_every_command_dispatches_to_a_settings_class():
    assert set(COMMANDS) == set(cli.COMMANDS) - {"prepare-data", "draw-patterns"}


@pytest.mark.parametrize("command", COMMANDS)
def test_settings_round_trip_yaml_and_json(command, tmp_path):
    cls, config = COMMANDS[command]
    cfg = load_settings(cls, ROOT / config if config else None)
    path = tmp_path / "settings.yaml"
    path.write_text(to_yaml(cfg))
    assert load_settings(cls, path) == cfg
    from_json = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert (cls.from_dict(from_json) if hasattr(cls, "from_dict") else build_dataclass(cls, from_json)) == cfg
    assert list(yaml.safe_load(to_yaml(cfg))) == [f.name for f in dataclasses.fields(cls)], "field order is kept"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_key_is_one_line_naming_the_close_match(command):
    cls, config = COMMANDS[command]
    first = dataclasses.fields(cls)[0].name
    typo = first[:-1] + ("x" if first[-1] != "x" else "y")
    argv = (["--config", str(ROOT / config)] if config else []) + [f"--{typo}", "3"]
    with pytest.raises(ConfigError) as error:
        parse_command(cls, argv)
    message = str(error.value)
    assert "\n" not in message and f"{typo!r}" in message and f"did you mean {first!r}" in message
    assert f"valid keys here: {first}, " in message


def test_nested_overrides_reach_every_kind_of_settings(tmp_path):
    run, _ = parse_command(RunConfig, ["--config", str(ROOT / COMMANDS["finetune"][1]), "--train.epochs", "1",
                                       "--sparse.options.window", "8", "--train.learning_rate", "1e-4"])
    assert (run.train.epochs, run.sparse_config().pattern.window, run.train.learning_rate) == (1, 8, 1e-4)
    study, _ = parse_command(StudyConfig, ["--config", str(ROOT / COMMANDS["study"][1]),
                                           "--common_overrides.train.epochs", "2"])
    assert study.common_overrides["train"]["epochs"] == 2
    bench, args = parse_command(BenchConfig, ["--pattern_options.bigbird.block_size", "32", "--lengths", "[4096, 8192]",
                                              "--max_memory_gb=4"])
    assert bench.pattern_options == {"bigbird": {"block_size": 32}} and bench.lengths == [4096, 8192]
    assert bench.max_memory_gb == 4.0 and args.overridden == ["pattern_options", "lengths", "max_memory_gb"]
    kernels, _ = parse_command(KernelBenchConfig, ["--device", "cpu", "--threads", "null", "--backends", "[blocksparse]"])
    assert (kernels.device, kernels.threads, kernels.backends) == ("cpu", None, ["blocksparse"])
    analyze, _ = parse_command(AnalyzeConfig, ["--model", "gpt2", "--model_config.n_layer", "2",
                                               "--model_config.n_head", "2", "--densities", "[0.25]"])
    assert analyze.model_config == {"n_layer": 2, "n_head": 2} and analyze.densities == [0.25]
    gate, _ = parse_command(GateTrainConfig, ["--config", str(ROOT / COMMANDS["train-gate"][1]), "--layers", "[0, 1]",
                                              "--learning_rate", "1e-3"])
    assert gate.layers == [0, 1] and gate.learning_rate == 1e-3 and gate.model == "minilm"


@pytest.mark.parametrize(("argv", "message"), [
    (["bench-kernels", "--lengths", "4096"], "config key 'lengths' must be a list, got int: 4096"),
    (["bench-kernels", "--dtype", "int8"], "dtype must be one of float32, bfloat16, float16, got 'int8'"),
    (["bench-model", "--models", "[bart]"], "unknown models ['bart']; choose from bert, gpt2, vit"),
    (["analyze", "--seq_len"], "override --seq_len has no value; write --seq_len VALUE"),
    (["train-gate", "steps=5"], "expected an override like --train.epochs 1, got 'steps=5'"),
])
def test_the_command_prints_bad_settings_as_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"hf-sparse {argv[0]}: error: {message}\n"
