"""``torch.compile(model, fullgraph=True)`` on a patched model works from the first call in a process and matches
eager. Each case runs in a fresh interpreter, so that "first call" is real (nothing logged or cached before)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import hf_sparse
    from tests.helpers.models import tiny_model

    backend, length, pad = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(0)
    model = hf_sparse.patch_model(tiny_model("bert"), "sliding_window", window=4, num_global=1, backend=backend,
                                  max_positions=max(length, 256))
    ids = torch.randint(5, 100, (2, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if pad == "right":
        mask[1, length - 5:] = 0
    elif pad == "left":  # per-row first-real-token offsets (0 and 5)
        mask[1, :5] = 0
    # the encoder's hidden states (the tiny classifier's logits are too small to tell patterns apart); no
    # output_hidden_states: Transformers' own output capturing takes a lock that fullgraph cannot trace
    compiled = torch.compile(model.bert, fullgraph=True, backend="eager")
    with torch.no_grad():
        got = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
        compiled_used = set(hf_sparse.last_backends(model).values())
        want = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # blocksparse (chosen by eager auto from 512 keys on CPU) gives way to masked_sdpa while compiling
    assert compiled_used == {"reference" if backend == "reference" else "masked_sdpa"}, compiled_used
""")


@pytest.mark.parametrize("backend,length,pad", [
    ("auto", 24, "none"),
    ("auto", 24, "left"),
    ("masked_sdpa", 24, "right"),
    ("reference", 24, "none"),
    ("auto", 600, "none"),          # eager auto takes blocksparse here (>= 512 keys on CPU)
    ("blocksparse", 40, "left"),
])
def test_fullgraph_compile_first_call_matches_eager(backend, length, pad):
    run = subprocess.run([sys.executable, "-c", SCRIPT, backend, str(length), pad], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
