"""Every snippet in docs/use_with.md marked ``# test: <name>`` runs as written (each builds its own tiny model),
in a fresh namespace and an empty working directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "use_with.md"
EXPECTED = {"trainer", "accelerate", "peft", "pipeline", "compile", "generate"}


def _snippets() -> dict[str, str]:
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    names = [re.match(r"# test: (\S+)\n", b) for b in blocks]
    return {name.group(1): block for name, block in zip(names, blocks, strict=True) if name}


def test_every_integration_has_a_tested_snippet():
    assert set(_snippets()) == EXPECTED


@pytest.fixture
def fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()


# PEFT reads Transformers' deprecated ``is_gradient_checkpointing`` (pyproject turns that warning into an error)
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_snippet_runs(name, tmp_path, monkeypatch, fresh_accelerate_state):
    if name in ("trainer", "accelerate", "peft", "pipeline"):
        pytest.importorskip({"trainer": "datasets", "pipeline": "tokenizers"}.get(name, name))
    monkeypatch.chdir(tmp_path)
    code = _snippets()[name]
    exec(compile(code, f"{DOC}:{name}", "exec"), {"__name__": f"use_with_{name}"})
