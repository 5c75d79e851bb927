"""Property test: every backend equals the reference kernel, forward and gradients, on >= 200 random calls.

Backends registered later (block-sparse, flex) are picked up automatically. Tolerance: fp32 outputs and
gradients within atol = rtol = 1e-4 of the float32 reference; bf16/fp16 within twice the reference kernel's
own error at that precision (tests/helpers/precision.py).
"""

from __future__ import annotations

import pytest
import torch

from hf_sparse.kernels import BACKENDS, reference_attention
from tests.helpers.cases import make_cases
from tests.helpers.precision import low_precision_error

CASES = make_cases(240)
FAST_BACKENDS = sorted(name for name in BACKENDS if name != "reference")
# Backends with a backward pass on this device (FlexAttention has none on CPU: it is covered by the
# forward-only test below instead of 240 skips).
GRAD_BACKENDS = [name for name in FAST_BACKENDS if BACKENDS[name].unsupported(CASES[0].call()) is None]
FP32_TOL = dict(atol=1e-4, rtol=1e-4)


def _grads(call, out):
    gen = torch.Generator().manual_seed(99)
    grad_out = torch.randn(out.shape, generator=gen).to(out.dtype)
    q_grad, k_grad, v_grad = torch.autograd.grad(out, (call.query, call.key, call.value), grad_out)
    return q_grad, k_grad, v_grad


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_backend_equals_reference_forward_and_backward(backend, case):
    call = case.call()
    reason = BACKENDS[backend].unsupported(call)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    out, _ = BACKENDS[backend].run(call)
    want, _ = reference_attention(call)
    torch.testing.assert_close(out, want, **FP32_TOL, msg=lambda m: f"{case}\n{m}")
    for got_grad, want_grad, name in zip(_grads(call, out), _grads(call, want), "qkv", strict=True):
        torch.testing.assert_close(
            got_grad, want_grad, **FP32_TOL, msg=lambda m, name=name: f"grad {name}: {case}\n{m}"
        )


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backend_low_precision(backend, dtype):
    """Within LOW_PRECISION_FACTOR x the reference kernel's own error at ``dtype`` (tests/helpers/precision.py)."""
    checked = 0
    for case in CASES[:12]:
        call = case.call(dtype=dtype, requires_grad=False)
        if BACKENDS[backend].unsupported(call) is not None:
            continue
        out, _ = BACKENDS[backend].run(call)
        assert out.dtype == dtype
        ref64, _ = reference_attention(case.call(dtype=torch.float64, requires_grad=False))
        ref_low, _ = reference_attention(call)
        error, allowed = low_precision_error(out, ref64, ref_low)
        assert error <= allowed, f"{backend} {dtype}: error {error:.3g} > {allowed:.3g}; {case}"
        checked += 1
    assert checked >= 10, f"only {checked} of 12 cases ran on {backend} in {dtype}"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backend_forward_only_inference(backend):
    """Inference (no autograd) on a slice of the cases: covers backends without a backward here (flex on CPU)."""
    checked = 0
    for case in CASES[:24]:
        call = case.call(requires_grad=False)
        if BACKENDS[backend].unsupported(call) is not None:
            continue
        out, _ = BACKENDS[backend].run(call)
        want, _ = reference_attention(call)
        torch.testing.assert_close(out, want, **FP32_TOL, msg=lambda m, c=case: f"{c}\n{m}")
        checked += 1
    assert checked >= 20, f"only {checked} of 24 cases ran on {backend}"


def test_blocksparse_cpu_training_path_in_small_chunks(monkeypatch):
    """The memory-lean CPU path (re-gathering in backward) processed in many small chunks still matches."""
    from hf_sparse.kernels import cpu_band, cpu_work

    monkeypatch.setattr(cpu_work, "CHUNK_BYTES", 1)  # gathered rows
    monkeypatch.setattr(cpu_band, "CHUNK_BYTES", 1)  # band pieces in backward
    for case in CASES[:12]:
        call = case.call()
        out, _ = BACKENDS["blocksparse"].run(call)
        want, _ = reference_attention(call)
        torch.testing.assert_close(out, want, **FP32_TOL, msg=lambda m, c=case: f"{c}\n{m}")
        for got_grad, want_grad in zip(_grads(call, out), _grads(call, want), strict=True):
            torch.testing.assert_close(got_grad, want_grad, **FP32_TOL, msg=lambda m, c=case: f"{c}\n{m}")


def test_compiled_flex_raises_the_recompile_limit_only_inside_its_call():
    """Compiled flex meets many shapes and mask functions; dynamo's default limit (8) would make the 9th fall back
    to eager flex. The raise is scoped to the call: the global setting is unchanged afterwards."""
    torch_dynamo = pytest.importorskip("torch._dynamo")
    from hf_sparse.kernels import flex

    before = torch_dynamo.config.recompile_limit
    with flex._recompile_budget(True):
        assert torch_dynamo.config.recompile_limit >= flex.RECOMPILE_LIMIT
    with flex._recompile_budget(False):
        assert torch_dynamo.config.recompile_limit == before
    assert torch_dynamo.config.recompile_limit == before


@pytest.mark.parametrize("length, expected", [(256, "masked_sdpa"), (1024, "blocksparse")])
def test_auto_keeps_short_inputs_on_masked_sdpa(length, expected):
    """Block gathering costs more than it saves below BLOCKSPARSE_MIN_LENGTH keys (measured), even when sparse."""
    from hf_sparse.kernels import AttentionCall, choose_backend
    from hf_sparse.kernels.dispatch import BLOCKSPARSE_MIN_LENGTH
    from hf_sparse.patterns import MaskContext, make_pattern

    assert 256 < BLOCKSPARSE_MIN_LENGTH <= 1024
    q = torch.zeros(1, 2, length, 16)
    call = AttentionCall(q, q, q, make_pattern("sliding_window", window=length // 16), MaskContext.for_length(length),
                         block_size=32)
    assert choose_backend(call, "auto") == expected


@pytest.mark.parametrize("pad_from, alone", [(None, set()), (700, {9, 10, 11, 12}), (300, {2, 3, 4, 5, 6})])
def test_blocksparse_band_rows_read_views_and_equal_reference(pad_from, alone, monkeypatch):
    """Sliding-window rows (the interior band and the shared windows at either end) are read as strided views,
    not gathered; forward and gradients still equal the reference (batch 2, grouped-query heads, padding, a
    partial last block, which alone is gathered). Padding from key 300 leaves band rows 7-12 of the padded
    batch row with nothing to attend (zeroed, and merged all the same)."""
    from hf_sparse.kernels import AttentionCall, cpu_band, cpu_flash
    from hf_sparse.patterns import MaskContext, make_pattern

    gathered = []
    real_gather = cpu_flash._gather
    monkeypatch.setattr(cpu_flash, "_gather", lambda blocks, work, part, n: gathered.append(
        part.stop - part.start) or real_gather(blocks, work, part, n))
    band_queries = []
    real_pieces = cpu_band._band_pieces
    monkeypatch.setattr(cpu_band, "_band_pieces", lambda *a, **kw: [
        band_queries.append((p.step, p.merge * 64, p.b, p.row0, p.count)) or p for p in real_pieces(*a, **kw)])
    gen = torch.Generator().manual_seed(3)
    length = 1000
    q = torch.randn(2, 4, length, 32, generator=gen).requires_grad_()
    k, v = (torch.randn(2, 2, length, 32, generator=gen).requires_grad_() for _ in range(2))
    mask = None
    if pad_from is not None:
        mask = torch.ones(2, 1, 1, length, dtype=torch.bool)
        mask[1, ..., pad_from:] = False
    call = AttentionCall(q, k, v, make_pattern("sliding_window", window=100), MaskContext.for_length(length),
                         attention_mask=mask, block_size=64)
    out, _ = BACKENDS["blocksparse"].run(call)
    want, _ = reference_attention(call)
    torch.testing.assert_close(out, want, **FP32_TOL)
    for got, ref, name in zip(_grads(call, out), _grads(call, want), "qkv", strict=True):
        torch.testing.assert_close(got, ref, **FP32_TOL, msg=lambda m, name=name: f"grad {name}\n{m}")
    n_rows = -(-length // 64)
    per_pass = sum(gathered) / 4  # keys and values, forward and backward
    assert per_pass == 1, f"gathered {per_pass} query-block rows of {n_rows} per pass; only the partial last one"
    # band rows that share one mask are merged BAND_QUERIES (256) queries per call, the leftover rows one by one;
    # in the padded batch row the rows whose window reaches the padding boundary each have their own mask and go
    # alone, the other rows are still merged
    for b in range(2):
        sliding = {queries for step, queries, row_b, *_ in band_queries if step == 1 and row_b == b}
        assert sliding == {64, cpu_band.BAND_QUERIES}, band_queries
    single = {row0 for step, queries, row_b, row0, _ in band_queries if step == 1 and row_b == 1 and queries == 64}
    assert single >= alone, band_queries
    if pad_from == 300:  # rows 7-12 (all padding) merged: rows to zero inside a merged call
        assert (1, cpu_band.BAND_QUERIES, 1, 7, 1) in band_queries, band_queries
    # a shared window's two rows go as one 128-query call, with or without rows to zero
    assert {queries for step, queries, *_ in band_queries if step == 0} == {128}, band_queries


def test_additive_masks_keep_expanded_dimensions_and_pass_float_masks():
    from hf_sparse.kernels.plan import additive

    allowed = torch.tensor([[True, False, True], [False, True, True]])
    expanded = allowed[None].expand(5, -1, -1)                   # one mask for 5 rows (stride 0)
    out = additive(expanded, torch.float32)
    assert out.stride(0) == 0 and out.dtype == torch.float32, "the expanded dim stays a view"
    want = torch.zeros(2, 3).masked_fill_(~allowed, float("-inf"))
    assert torch.equal(out, want.expand(5, -1, -1))
    bias = torch.randn(2, 3)
    assert additive(bias, torch.float32) is bias and additive(None, torch.float32) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("model_mask", [None, "padding", "rows", "bias"])
def test_blocksparse_inference_band_rows_take_the_matmul_path_and_equal_reference(dtype, model_mask, monkeypatch):
    """Without autograd, sliding band rows of fp32/fp64 queries go through batched matmuls + softmax (no
    log-sum-exp) instead of the fused kernel and still equal the reference: one shared tile mask, a key-padding
    mask (per-batch masks), a per-query boolean mask that empties some rows (zeroed), an additive bias; half types
    stay on the fused kernel (within twice the reference's own bf16 error)."""
    from hf_sparse.kernels import AttentionCall, cpu_band
    from hf_sparse.patterns import MaskContext, make_pattern

    rows_by_matmul = []
    real = cpu_band._band_matmul
    monkeypatch.setattr(cpu_band, "_band_matmul", lambda q, k, v, work, *a: rows_by_matmul.append(
        work.rows.numel()) or real(q, k, v, work, *a))
    gen = torch.Generator().manual_seed(5)
    batch, length = 2, 640
    q, k, v = (torch.randn(batch, 4, length, 32, generator=gen).to(dtype) for _ in range(3))
    mask = bias = None
    if model_mask == "padding":
        mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
        mask[1, ..., 500:] = False
    elif model_mask == "rows":  # batch row 1: queries 200-263 see only keys >= 600, outside their window
        mask = torch.ones(batch, 1, length, length, dtype=torch.bool)
        mask[1, :, 200:264, :600] = False
    elif model_mask == "bias":
        bias = torch.randn(1, 4, length, length, generator=gen).to(dtype)
    call = AttentionCall(q, k, v, make_pattern("sliding_window", window=90), MaskContext.for_length(length),
                         attention_mask=mask, position_bias=bias, block_size=64)
    with torch.no_grad():
        out, _ = BACKENDS["blocksparse"].run(call)
    want, _ = reference_attention(AttentionCall(q.double(), k.double(), v.double(), call.pattern, call.ctx,
                                                attention_mask=mask, block_size=64,
                                                position_bias=None if bias is None else bias.double()))
    if dtype == torch.bfloat16:
        error, allowed = low_precision_error(out, want, reference_attention(call)[0])
        assert error <= allowed, f"bf16 error {error:.3g} > {allowed:.3g}"
    else:
        torch.testing.assert_close(out.double(), want, **FP32_TOL)
    if model_mask == "rows":
        assert out[1, :, 200:264].abs().max() == 0, "rows the masks leave with no key are zero"
    if dtype == torch.bfloat16:
        assert rows_by_matmul == [], "half types stay on the fused kernel"
    else:
        assert sum(rows_by_matmul) >= 5, f"band rows on the matmul path per batch: {rows_by_matmul}"


LEFT_PADDED_PATTERNS = [
    ("sliding_window", {"window": 5, "num_global": 1}),
    ("sliding_window", {"window": 3, "num_global": 3}),
    ("block_local", {"block_size": 16, "num_global": 1}),
    ("strided", {"stride": 7, "window": 2, "num_global": 2}),
    ("dilated", {"window": 4, "dilation": 2, "num_global": 1}),
    ("longformer", {"window": 4}),
    ("random", {"num_random": 1, "block_size": 16, "num_global": 1}),
    ("bigbird", {"block_size": 16, "num_random_blocks": 1, "num_global_blocks": 1}),
]
LEFT_OFFSETS = (0, 9, 40)  # first real token of each batch row


def _left_padded_call(name, options, causal, q_len, requires_grad=True, length=70):
    from hf_sparse.kernels import AttentionCall
    from hf_sparse.patterns import MaskContext, make_pattern

    gen = torch.Generator().manual_seed(11)
    batch = len(LEFT_OFFSETS)
    q = torch.randn(batch, 4, q_len, 16, generator=gen).requires_grad_(requires_grad)
    k, v = (torch.randn(batch, 2, length, 16, generator=gen).requires_grad_(requires_grad) for _ in range(2))
    keep = torch.ones(batch, length, dtype=torch.bool)
    for row, offset in enumerate(LEFT_OFFSETS):
        keep[row, :offset] = False
    mask = keep[:, None, None, :].expand(batch, 1, q_len, length)
    if causal:  # a model's explicit mask carries causality, as Transformers' does
        i = torch.arange(length - q_len, length)[:, None]
        mask = mask & (torch.arange(length)[None, :] <= i)
    ctx = MaskContext(q_len, length, length - q_len, causal=causal)
    return AttentionCall(q, k, v, make_pattern(name, **options), ctx, attention_mask=mask, block_size=16)


@pytest.mark.parametrize("q_len", [70, 33, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name,options", LEFT_PADDED_PATTERNS)
def test_left_padded_rows_count_positions_from_their_first_real_token(name, options, causal, q_len):
    """The rule: each row is what the sequence gives alone (its real part, positions from its first real token);
    query rows before the first real token get zeros. Random draws depend on the call's length, so for random
    and bigbird only the rows without padding are compared with the row alone."""
    from hf_sparse.kernels import AttentionCall
    from hf_sparse.patterns import MaskContext

    call = _left_padded_call(name, options, causal, q_len, requires_grad=False)
    out, _ = reference_attention(call)
    length = call.key.shape[2]
    for row, offset in enumerate(LEFT_OFFSETS):
        start = max(0, offset - (length - q_len))  # first real query row
        assert torch.equal(out[row, :, :start], torch.zeros_like(out[row, :, :start]))
        if name in ("random", "bigbird") and offset:
            continue
        ctx = MaskContext(q_len - start, length - offset, length - q_len + start - offset, causal=causal)
        alone = AttentionCall(call.query[row:row + 1, :, start:], call.key[row:row + 1, :, offset:],
                              call.value[row:row + 1, :, offset:], call.pattern, ctx)
        want, _ = reference_attention(alone)
        torch.testing.assert_close(out[row:row + 1, :, start:], want, **FP32_TOL)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("q_len", [70, 1])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name,options", LEFT_PADDED_PATTERNS)
def test_backends_equal_reference_on_left_padded_rows(backend, name, options, causal, q_len):
    """Per-row first-real-token offsets (0, 9, 40 in one batch): every backend equals the reference, forward and
    (where the backend has a backward here) gradients."""
    call = _left_padded_call(name, options, causal, q_len, requires_grad=backend in GRAD_BACKENDS)
    if BACKENDS[backend].unsupported(call) is not None:
        pytest.skip(BACKENDS[backend].unsupported(call))
    out, _ = BACKENDS[backend].run(call)
    want, _ = reference_attention(call)
    torch.testing.assert_close(out, want, **FP32_TOL)
    if backend in GRAD_BACKENDS:
        for got, ref, grad in zip(_grads(call, out), _grads(call, want), "qkv", strict=True):
            torch.testing.assert_close(got, ref, **FP32_TOL, msg=lambda m, grad=grad: f"grad {grad}\n{m}")


@pytest.mark.parametrize("grad", [False, True])
def test_blocksparse_combines_a_model_mask_once_for_all_layers(grad, monkeypatch):
    """The layers of one forward pass share the model's mask tensor: the block-sparse kernel combines it with the
    plan's tiles for the first call only and reuses the result while the same, unmodified tensor comes back. A
    mask changed in place, a new mask and an inference-mode mask are combined anew; every output equals the
    reference for the mask it was given."""
    from hf_sparse.kernels import AttentionCall, blocksparse, clear_caches
    from hf_sparse.patterns import MaskContext, make_pattern

    clear_caches()
    combined = []
    real = blocksparse._group_mask
    monkeypatch.setattr(blocksparse, "_group_mask", lambda *a, **kw: combined.append(1) or real(*a, **kw))
    gen = torch.Generator().manual_seed(11)
    length = 600
    mask = torch.ones(2, 1, length, length, dtype=torch.bool)  # padding as Transformers expands it: [B, 1, L, L]
    mask[1, ..., 450:] = False

    def layer(attention_mask):
        q, k, v = (torch.randn(2, 4, length, 32, generator=gen).requires_grad_(grad) for _ in range(3))
        call = AttentionCall(q, k, v, make_pattern("sliding_window", window=40, num_global=1),
                             MaskContext.for_length(length), attention_mask=attention_mask, block_size=64)
        out, _ = BACKENDS["blocksparse"].run(call)
        torch.testing.assert_close(out, reference_attention(call)[0], **FP32_TOL)
        if grad:
            for got, ref in zip(_grads(call, out), _grads(call, reference_attention(call)[0]), strict=True):
                torch.testing.assert_close(got, ref, **FP32_TOL)

    layer(mask)
    per_layer = len(combined)
    assert per_layer >= 2  # the sliding rows and the global row
    layer(mask)
    layer(mask)
    assert len(combined) == per_layer, "the next layers reuse the combined masks"
    mask[0, ..., 500:] = False                                   # changed in place: combined anew
    layer(mask)
    assert len(combined) == 2 * per_layer
    layer(mask.clone())                                          # another tensor: combined anew
    assert len(combined) == 3 * per_layer
    if not grad:
        with torch.inference_mode():
            frozen = mask.clone()
            layer(frozen)
            layer(frozen)                                        # no version counter: never reused
        assert len(combined) == 5 * per_layer
    clear_caches()
    assert blocksparse._MEMO.mask is None
