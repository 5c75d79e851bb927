"""The public API: ``hf_sparse.__all__``, settings vs pattern options, the registries' conflict policy, the
version in saved settings, and ``summary``."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import transformers as tf
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import hf_sparse
from hf_sparse import SparseConfig, patch_model, sparse_attention
from hf_sparse.integration import IMPLEMENTATION_NAME, register_attention, sparse_attention_forward
from hf_sparse.kernels import dispatch
from hf_sparse.kernels.dispatch import Backend, register_backend
from hf_sparse.kernels.reference import reference_attention
from hf_sparse.patterns import RESERVED_OPTION_NAMES, Pattern, SlidingWindow, make_pattern, registry
from tests.helpers.models import model_inputs, tiny_model

PUBLIC = [
    "MaskContext", "Pattern", "SparseConfig", "apply_saved_patch", "extend_positions", "last_backends",
    "load_patched", "make_pattern", "patch_model", "patched_modules", "pattern_names", "register_pattern",
    "sparse_attention", "summary", "unpatch_model",
]
ALREADY = re.compile(
    r"^a (pattern|backend|attention function|attention mask function) named '[^']+' is already registered "
    r"\([^)]*\); pass overwrite=True to replace it, or choose another name$"
)


# -- __all__ -------------------------------------------------------------------------------------------------
def test_all_is_exactly_the_user_facing_names_and_each_resolves():
    assert hf_sparse.__all__ == PUBLIC
    for name in PUBLIC:
        assert getattr(hf_sparse, name) is not None
    namespace: dict = {}
    exec("from hf_sparse import *", namespace)
    assert sorted(k for k in namespace if not k.startswith("__")) == sorted(PUBLIC)
    # nothing else public sits at the top level (submodules aside)
    public = {n for n in dir(hf_sparse) if not n.startswith("_") and not inspect.ismodule(getattr(hf_sparse, n))}
    assert public == set(PUBLIC)


def test_internals_left_the_top_level_but_import_from_their_modules():
    from hf_sparse.integration import IMPLEMENTATION_NAME, ModuleSparseState, get_state  # noqa: F401
    from hf_sparse.kernels import backend_names  # noqa: F401
    from hf_sparse.learned import LearnedGate, TopKBlocks, gate_scope  # noqa: F401
    from hf_sparse.patterns import BigBird, SlidingWindow, allowed_matrix, block_layout, density  # noqa: F401

    for name in ("get_state", "iter_states", "IMPLEMENTATION_NAME", "allowed_matrix", "backend_names",
                 "SlidingWindow", "gate_scope"):
        assert not hasattr(hf_sparse, name), name
    assert "topk_blocks" in hf_sparse.pattern_names() and "learned_gate" in hf_sparse.pattern_names()


# -- settings vs pattern options ----------------------------------------------------------------------------
def _keyword_params(fn) -> set[str]:
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {n for n, p in inspect.signature(fn).parameters.items() if p.kind in kinds}


def test_reserved_names_cover_every_setting_keyword_and_no_pattern_option_uses_one():
    settings = _keyword_params(patch_model) | _keyword_params(sparse_attention)
    settings |= {f.name for f in dataclasses.fields(SparseConfig)}
    assert settings <= RESERVED_OPTION_NAMES, sorted(settings - RESERVED_OPTION_NAMES)
    for name in hf_sparse.pattern_names():
        assert not set(registry.option_names(name)) & RESERVED_OPTION_NAMES, name


def test_a_pattern_with_an_option_named_like_a_setting_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "PATTERNS", dict(registry.PATTERNS))

    @dataclass(frozen=True)
    class Clashing(Pattern):
        name: ClassVar[str] = "test_clashing"
        kernel_block_size: int = 8
        backend: str = "x"

    with pytest.raises(ValueError, match=r"'test_clashing' .* option\(s\) backend, kernel_block_size, reserved .*; rename"):
        hf_sparse.register_pattern(Clashing)
    assert "test_clashing" not in registry.PATTERNS
    with pytest.raises(TypeError, match="dataclass subclass of Pattern"):
        hf_sparse.register_pattern(int)


def test_patch_model_routes_settings_and_options_apart():
    model = patch_model(tiny_model("bert"), "bigbird", block_size=8, num_random_blocks=1, kernel_block_size=16,
                        backend="reference", layers=[1])
    (config,) = hf_sparse.patched_modules(model).values()
    assert config.pattern.block_size == 8 and config.kernel_block_size == 16
    assert config.backend == "reference" and config.layers == [1]


def test_options_and_settings_never_mix_silently():
    model = tiny_model("bert")
    with pytest.raises(TypeError, match=r"'sliding_window' got unexpected option\(s\) block_size; .*kernel_block_size="):
        patch_model(model, "sliding_window", block_size=8)
    with pytest.raises(TypeError, match=r"unexpected option\(s\) widow; it takes: num_global, window"):
        patch_model(model, "sliding_window", widow=8)
    with pytest.raises(TypeError, match="version= is neither a setting nor a pattern option"):
        patch_model(model, "sliding_window", version=2)
    config = SparseConfig(SlidingWindow(window=4))
    with pytest.raises(TypeError, match=r"SparseConfig and also backend, window; set them on the SparseConfig"):
        patch_model(model, config, window=3, backend="reference")
    with pytest.raises(TypeError, match=r"options window .* pattern object sliding_window\(window=4\)"):
        patch_model(model, SlidingWindow(window=4), window=3)
    with pytest.raises(TypeError, match=r"options block_size .*; put them in the pattern instead .*kernel_block_size="):
        patch_model(model, make_pattern("bigbird"), block_size=8)
    with pytest.raises(TypeError, match=r"options window were given together with a pattern dict"):
        patch_model(model, {"name": "sliding_window", "window": 4}, window=3)
    assert hf_sparse.patched_modules(model) == {}, "a refused call changes nothing"
    # a SparseConfig may still be joined by what it does not carry
    patch_model(model, config, filter_fn=lambda name, _: name.endswith("0.attention.self"))
    assert list(hf_sparse.patched_modules(model)) == ["bert.encoder.layer.0.attention.self"]


def test_sparse_attention_block_size_is_the_patterns_and_kernel_block_size_the_kernels():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 32, 8) for _ in range(3))
    by_name, _ = sparse_attention(q, k, v, "block_local", block_size=4, backend="reference")
    by_object, _ = sparse_attention(q, k, v, make_pattern("block_local", block_size=4), backend="reference")
    default, _ = sparse_attention(q, k, v, "block_local", backend="reference")
    torch.testing.assert_close(by_name, by_object, rtol=0, atol=0)
    assert (by_name - default).abs().max() > 1e-3, "block_size reached the pattern"
    tiled, _ = sparse_attention(q, k, v, "block_local", block_size=4, backend="blocksparse", kernel_block_size=8)
    torch.testing.assert_close(tiled, by_name, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match=r"'sliding_window' got unexpected option\(s\) block_size.*kernel_block_size="):
        sparse_attention(q, k, v, "sliding_window", window=2, block_size=4)


# -- registries ---------------------------------------------------------------------------------------------
def test_pattern_registry_conflicts(monkeypatch):
    monkeypatch.setattr(registry, "PATTERNS", dict(registry.PATTERNS))

    @dataclass(frozen=True)
    class Impostor(SlidingWindow):
        name: ClassVar[str] = "sliding_window"

    with pytest.raises(ValueError, match=ALREADY) as err:
        hf_sparse.register_pattern(Impostor)
    assert "'sliding_window'" in str(err.value) and "SlidingWindow" in str(err.value)
    assert registry.PATTERNS["sliding_window"] is SlidingWindow
    assert hf_sparse.register_pattern(SlidingWindow) is SlidingWindow  # the same class again: no-op
    assert hf_sparse.register_pattern(overwrite=True)(Impostor) is Impostor
    assert type(make_pattern("sliding_window", window=2)) is Impostor


def test_backend_registry_conflicts(monkeypatch):
    monkeypatch.setattr(dispatch, "BACKENDS", dict(dispatch.BACKENDS))
    original = dispatch.BACKENDS["reference"]
    other = Backend("reference", lambda call: reference_attention(call))
    with pytest.raises(ValueError, match=ALREADY):
        register_backend(other)
    assert dispatch.BACKENDS["reference"] is original
    assert register_backend(Backend("reference", reference_attention, returns_weights=True)) is not None  # equal
    assert register_backend(other, overwrite=True) is other and dispatch.BACKENDS["reference"] is other
    with pytest.raises(ValueError, match="'auto' is the automatic backend choice"):
        register_backend(Backend("auto", reference_attention))


def test_attention_function_registry_conflicts(monkeypatch):
    for interface in (AttentionInterface, AttentionMaskInterface):
        monkeypatch.setattr(interface, "_global_mapping", dict(interface._global_mapping))

    def other(*args, **kwargs):
        raise AssertionError("never called")

    register_attention(IMPLEMENTATION_NAME, sparse_attention_forward, sdpa_mask)  # the same functions: no-op
    hf_sparse.integration.register()
    for name in (IMPLEMENTATION_NAME, "sdpa"):
        with pytest.raises(ValueError, match=ALREADY):
            register_attention(name, other, sdpa_mask)
    assert AttentionInterface()[IMPLEMENTATION_NAME] is sparse_attention_forward
    register_attention("test_other", other, sdpa_mask)
    with pytest.raises(ValueError, match=ALREADY):
        register_attention("test_other", sparse_attention_forward, sdpa_mask)
    register_attention("test_other", sparse_attention_forward, sdpa_mask, overwrite=True)
    assert AttentionInterface()["test_other"] is sparse_attention_forward


# -- the version in saved settings --------------------------------------------------------------------------
def test_version_is_defined_once_and_read_by_the_build():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hf_sparse._version.__version__"}
    from hf_sparse._version import __version__

    assert hf_sparse.__version__ == __version__ and re.fullmatch(r"\d+\.\d+\.\d+.*", __version__)


def _with_saved_version(source: Path, target: Path, version: object) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    if version is None:
        del config["hf_sparse"]["version"]
    else:
        config["hf_sparse"]["version"] = version
    (target / "config.json").write_text(json.dumps(config))
    return target


def _load(path: Path) -> tuple[torch.nn.Module, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = hf_sparse.load_patched(tf.BertForSequenceClassification, str(path))
    return model, [str(w.message) for w in caught if "hf_sparse settings were saved" in str(w.message)]


def test_saved_settings_record_the_version_and_load_from_any_version(tmp_path):
    model = patch_model(tiny_model("bert"), "sliding_window", window=4, num_global=1)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())["hf_sparse"]
    assert saved["version"] == hf_sparse.__version__
    expected = hf_sparse.patched_modules(model)
    major = int(hf_sparse.__version__.split(".")[0])
    for version, warns in [(hf_sparse.__version__, False), (f"{major}.999.0", False), (None, False),
                           (1, False), (f"{major + 1}.0.0", True)]:
        path = _with_saved_version(tmp_path / "saved", tmp_path / f"v_{version}", version)
        loaded, messages = _load(path)
        assert hf_sparse.patched_modules(loaded) == expected, version
        assert bool(messages) == warns, (version, messages)
        # re-applied settings record the installed version
        assert loaded.config.hf_sparse["version"] == hf_sparse.__version__
    assert re.search(rf"saved by hf_sparse {major + 1}\.0\.0, installed is .*another major version", messages[0])


# -- summary ------------------------------------------------------------------------------------------------
def test_summary_before_and_after_a_forward():
    model = tiny_model("bert")
    assert hf_sparse.summary(model) == (
        "hf_sparse: nothing is patched in BertForSequenceClassification (0 of 2 self-attention modules)")
    patch_model(model, "sliding_window", window=4, num_global=1, layers=[1], backend="reference")
    lines = hf_sparse.summary(model).splitlines()
    assert lines[0] == "hf_sparse: 1 of 2 self-attention modules of BertForSequenceClassification patched"
    assert lines[1].split() == ["module", "pattern", "backend", "last", "served", "by"]
    assert lines[2].split() == ["bert.encoder.layer.1.attention.self", "sliding_window(num_global=1,", "window=4)",
                                "reference", "-"]
    with torch.no_grad():
        model(**model_inputs("bert"))
    lines = hf_sparse.summary(model).splitlines()
    assert len(lines) == 3 and lines[2].endswith("reference  reference (1 call)")
    assert lines[1].index("last served by") == lines[2].index("reference (1 call)")  # columns line up
    hf_sparse.unpatch_model(model)
    assert hf_sparse.summary(model).startswith("hf_sparse: nothing is patched")


def test_summary_counts_self_attention_and_names_cross_attention():
    model = patch_model(tiny_model("t5"), "sliding_window", window=2, target_modules=r"encoder\..*")
    text = hf_sparse.summary(model)
    assert text.splitlines()[0] == ("hf_sparse: 2 of 4 self-attention modules of T5ForConditionalGeneration "
                                    "patched; 2 cross-attention module(s) stay dense")
    assert [line.split()[0] for line in text.splitlines()[2:]] == [
        "encoder.block.0.layer.0.SelfAttention", "encoder.block.1.layer.0.SelfAttention"]
    with pytest.raises(TypeError, match="summary expects a torch.nn.Module, got str"):
        hf_sparse.summary("model")
