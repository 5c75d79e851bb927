"""GPU checks, skipped without CUDA: the kernels and a patched model on a CUDA device equal the reference.

Tolerances: fp32 outputs and gradients within atol = rtol = 2e-4 of the fp32 reference on the same device
(CUDA's fused SDPA kernels sum in a different order than the CPU ones); bf16 within 3e-2 of the fp32
reference (gradients: the largest error within 3e-2 of the largest reference gradient, since a key's gradient
sums over every query that sees it, rounded in bf16). FlexAttention is checked eagerly on many calls and compiled (Triton) on a few, since each new
shape compiles anew.
"""

from __future__ import annotations

import pytest
import torch

import hf_sparse
from hf_sparse.kernels import BACKENDS, choose_backend, reference_attention
from hf_sparse.patterns import make_pattern
from tests.helpers.cases import make_cases
from tests.helpers.models import model_inputs, run_model, tiny_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CASES = make_cases(240)[:40]
FP32_TOL = dict(atol=2e-4, rtol=2e-4)
BF16_TOL = dict(atol=3e-2, rtol=3e-2)


@pytest.fixture
def eager_flex(monkeypatch):
    monkeypatch.setenv("HF_SPARSE_FLEX_COMPILE", "0")


def _grads(call, out):
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(99)).to(out)
    return torch.autograd.grad(out, (call.query, call.key, call.value), grad_out)


def _check(backend: str, case, dtype: torch.dtype, backward: bool) -> bool:
    """Compare ``backend`` on CUDA with the fp32 reference on CUDA; ``False`` if the backend can't run it."""
    call = case.call(dtype=dtype, device="cuda", requires_grad=backward)
    if BACKENDS[backend].unsupported(call) is not None:
        return False
    want_call = case.call(device="cuda", requires_grad=backward)
    out, _ = BACKENDS[backend].run(call)
    want, _ = reference_attention(want_call)
    tol = FP32_TOL if dtype == torch.float32 else BF16_TOL
    assert out.device.type == "cuda" and out.dtype == dtype
    torch.testing.assert_close(out.float(), want, **tol, msg=lambda m: f"{backend} {dtype} {case}\n{m}")
    if backward:
        for got, ref, name in zip(_grads(call, out), _grads(want_call, want), "qkv", strict=True):
            if dtype == torch.float32:
                torch.testing.assert_close(got, ref, **tol,
                                           msg=lambda m, name=name: f"{backend} grad {name} {case}\n{m}")
            else:
                error, scale = (got.float() - ref).abs().max(), ref.abs().max().clamp_min(1.0)
                assert error <= 3e-2 * scale, f"{backend} grad {name} {dtype}: error {error:.3g} > 3e-2 x {scale:.3g}; {case}"
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["blocksparse", "masked_sdpa", "flex"])
def test_backends_equal_reference_on_cuda(backend, dtype, eager_flex):
    ran = sum(_check(backend, case, dtype, backward=True) for case in CASES)
    assert ran >= 30, f"only {ran} of {len(CASES)} cases ran on {backend}"


@pytest.mark.parametrize("index", [0, 3, 7])
def test_compiled_flex_equals_reference_forward_and_backward(index, monkeypatch):
    monkeypatch.setenv("HF_SPARSE_FLEX_COMPILE", "1")
    case = next(c for c in CASES[index:] if c.head_dim >= 16 and c.length >= 64)
    assert _check("flex", case, torch.bfloat16, backward=True)


@pytest.mark.parametrize("length, expected", [(4096, "masked_sdpa"), (8192, "flex")])
def test_auto_on_cuda_follows_the_measured_lengths(length, expected):
    """On an H200 flex beat the masked fallback from 8,192 keys, not at 4,096 (dispatch.MIN_KEYS)."""
    from hf_sparse.kernels import AttentionCall
    from hf_sparse.patterns import MaskContext

    q = torch.zeros(1, 2, length, 64, device="cuda")
    call = AttentionCall(q, q, q, make_pattern("sliding_window", window=length // 16), MaskContext.for_length(length))
    assert choose_backend(call) == expected
    training = AttentionCall(q, q, q, call.pattern, call.ctx, dropout_p=0.1)  # flex has no dropout
    assert choose_backend(training) == "masked_sdpa"


@pytest.mark.parametrize("family,pattern,options", [
    ("bert", "sliding_window", {"window": 5}),
    ("gpt2", "bigbird", {"block_size": 8}),
    ("vit", "local_2d", {"window": 1}),
    ("bert", "topk_blocks", {"block_size": 8, "k": 1}),
])
@pytest.mark.parametrize("backend", ["blocksparse", "flex"])
def test_patched_model_on_cuda_equals_reference_and_trains(family, pattern, options, backend, eager_flex):
    inputs = {k: v.cuda() for k, v in model_inputs(family, length=45, pad_from=30).items()}
    model = hf_sparse.patch_model(tiny_model(family).cuda(), pattern, backend="reference", **options)
    want = run_model(model, inputs)
    hf_sparse.unpatch_model(model)
    hf_sparse.patch_model(model, pattern, backend=backend, **options)
    torch.testing.assert_close(run_model(model, inputs), want, **FP32_TOL)
    if backend == "flex":
        return  # training with flex on CUDA is covered at kernel level (test_backends_equal_reference_on_cuda)
    model.train()
    out = model(**inputs)
    logits = out.logits
    logits.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

