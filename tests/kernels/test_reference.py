"""The reference kernel (the oracle) against hand computation, and its edge-case guarantees."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from hf_sparse.kernels import AttentionCall, reference_attention, sparse_attention
from hf_sparse.patterns import BlockLayout, MaskContext, Pattern, SlidingWindow, make_pattern


def _loops(q, k, v, allowed, scale, bias=None):
    """Attention by explicit loops over one batch element and head."""
    lq, lk = allowed.shape
    out = torch.zeros(lq, v.shape[-1], dtype=torch.float64)
    for i in range(lq):
        scores = [float(q[i] @ k[j]) * scale + (0.0 if bias is None else float(bias[i, j])) for j in range(lk)]
        keep = [j for j in range(lk) if allowed[i, j]]
        if not keep:
            continue
        top = max(scores[j] for j in keep)
        weights = {j: math.exp(scores[j] - top) for j in keep}
        total = sum(weights.values())
        for j, w in weights.items():
            out[i] += (w / total) * v[j].double()
    return out


def test_reference_matches_loops_with_padding_and_bias():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 11, 8, dtype=torch.float64) for _ in range(3))
    pad = torch.ones(2, 1, 1, 11, dtype=torch.bool)
    pad[1, ..., 7:] = False
    bias = torch.randn(1, 2, 11, 11, dtype=torch.float64)
    pattern = SlidingWindow(window=2, num_global=1)
    call = AttentionCall(q, k, v, pattern, MaskContext.for_length(11), attention_mask=pad, position_bias=bias)
    out, _ = reference_attention(call)
    from tests.helpers.formulas import formula

    allowed = torch.from_numpy(formula("sliding_window", 11, window=2, num_global=1))
    for b in range(2):
        for h in range(2):
            want = _loops(q[b, h], k[b, h], v[b, h], allowed & pad[b, 0], 8 ** -0.5, bias[0, h])
            torch.testing.assert_close(out[b, h].double(), want, atol=1e-10, rtol=1e-10)


def test_fully_masked_rows_are_zero_with_finite_zero_gradients():
    q, k, v = (torch.randn(1, 1, 6, 4, requires_grad=True) for _ in range(3))
    pad = torch.zeros(1, 1, 1, 6, dtype=torch.bool)
    pad[..., :2] = True  # keys 0-1 only; a window of 1 leaves rows 3..5 with nothing allowed
    for backend in ("reference", "masked_sdpa", "blocksparse"):
        out, _ = sparse_attention(q, k, v, "sliding_window", window=1, attention_mask=pad, backend=backend,
                                  kernel_block_size=2)
        assert torch.isfinite(out).all()
        assert (out[0, 0, 3:] == 0).all() and (out[0, 0, :3] != 0).any()
        (out.sum()).backward()
        for t in (q, k, v):
            assert torch.isfinite(t.grad).all()
        assert (q.grad[0, 0, 3:] == 0).all()
        for t in (q, k, v):
            t.grad = None


def test_weights_are_returned_and_respect_the_pattern():
    q, k, v = (torch.randn(1, 3, 20, 8) for _ in range(3))
    out, weights = sparse_attention(q, k, v, "strided", stride=4, window=1, need_weights=True, is_causal=True)
    assert weights.shape == (1, 3, 20, 20)
    from tests.helpers.formulas import formula

    allowed = torch.from_numpy(formula("strided", 20, stride=4, window=1, causal=True))
    assert (weights[..., ~allowed] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 3, 20))
    torch.testing.assert_close(out, weights @ v)


def test_dropout_scales_kept_weights():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    _, clean = sparse_attention(q, k, v, "sliding_window", window=3, need_weights=True)
    _, dropped = sparse_attention(q, k, v, "sliding_window", window=3, need_weights=True, dropout_p=0.5)
    kept = dropped != 0
    assert 0 < kept.sum() < (clean != 0).sum()
    torch.testing.assert_close(dropped[kept], 2 * clean[kept])


def test_grouped_query_attention_repeats_key_value_heads():
    q = torch.randn(1, 4, 9, 8)
    k, v = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    out, _ = sparse_attention(q, k, v, "dense", backend="reference")
    want = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_float_masks_are_additive():
    q, k, v = (torch.randn(2, 2, 10, 8) for _ in range(3))
    keep = torch.rand(2, 1, 10, 10) > 0.3
    keep[..., 0] = True
    additive = torch.zeros(2, 1, 10, 10).masked_fill(~keep, torch.finfo(torch.float32).min)
    a, _ = sparse_attention(q, k, v, "sliding_window", window=2, attention_mask=keep, backend="reference")
    b, _ = sparse_attention(q, k, v, "sliding_window", window=2, attention_mask=additive, backend="reference")
    c, _ = sparse_attention(q, k, v, "sliding_window", window=2, attention_mask=additive, backend="masked_sdpa")
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_bad_shapes_and_backends_are_reported():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="4-D"):
        sparse_attention(q[0], q[0], q[0], "dense")
    with pytest.raises(ValueError, match="query length 5 exceeds key length 3"):
        sparse_attention(q, q[:, :, :3], q[:, :, :3], "dense")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        sparse_attention(q, q, q, "dense", backend="fast")
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        sparse_attention(torch.randn(1, 3, 5, 8), q, q, make_pattern("dense"), backend="reference")


@dataclass(frozen=True)
class LoudestBlock(Pattern):
    """Test-only data-dependent pattern: every query attends the one key block with the largest summed key
    norm, chosen per batch element and head."""

    name: ClassVar[str] = "test_loudest_block"
    dynamic: ClassVar[bool] = True
    binds: ClassVar[list] = []

    def bind_dynamic(self, query, key, ctx, block_size):
        LoudestBlock.binds.append(block_size)
        n = -(-ctx.kv_len // block_size)
        norms = torch.nn.functional.pad(key.norm(dim=-1), (0, n * block_size - ctx.kv_len))
        best = norms.view(*norms.shape[:2], n, block_size).sum(-1).argmax(-1)  # [B, H]
        active = torch.nn.functional.one_hot(best, n).bool()[:, :, None, :].expand(*best.shape, -(-ctx.q_len // block_size), n)

        def mask(b, h, q_idx, kv_idx):
            return torch.div(kv_idx, block_size, rounding_mode="floor") == best[b, h]

        return mask, BlockLayout(block_size, ctx.q_len, ctx.kv_len, active, active)


def test_dynamic_patterns_are_bound_once_per_call_from_the_data():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 20, 8), torch.randn(2, 3, 20, 8), torch.randn(2, 3, 20, 8)
    LoudestBlock.binds.clear()
    out, weights = sparse_attention(q, k, v, LoudestBlock(), need_weights=True, kernel_block_size=5)
    assert LoudestBlock.binds == [5]
    best = k.norm(dim=-1).view(2, 3, 4, 5).sum(-1).argmax(-1)
    for b in range(2):
        for h in range(3):
            keep = slice(5 * int(best[b, h]), 5 * int(best[b, h]) + 5)
            want = torch.softmax(q[b, h] @ k[b, h, keep].T * 8 ** -0.5, -1) @ v[b, h, keep]
            torch.testing.assert_close(out[b, h], want, atol=1e-5, rtol=1e-5)
            assert (weights[b, h, :, keep].sum(-1) - 1).abs().max() < 1e-5
    masked, _ = sparse_attention(q, k, v, LoudestBlock(), backend="masked_sdpa", kernel_block_size=5)
    torch.testing.assert_close(masked, out, atol=1e-5, rtol=1e-5)


def test_rows_the_pattern_leaves_empty_are_zero_in_every_backend():
    """An intersection that leaves some query rows with no key: zeros, finite gradients, all backends agree."""
    pattern = make_pattern("block_local", block_size=4) & make_pattern("random", num_random=1, block_size=4, seed=3)
    q, k, v = (torch.randn(2, 2, 23, 8, requires_grad=True) for _ in range(3))
    outs = {}
    for backend in ("reference", "masked_sdpa", "blocksparse"):
        out, _ = sparse_attention(q, k, v, pattern, backend=backend, kernel_block_size=4)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)
        outs[backend] = out
    from hf_sparse.patterns import allowed_matrix

    empty = ~allowed_matrix(pattern, MaskContext.for_length(23)).any(-1)
    assert empty.any() and (outs["blocksparse"][:, :, empty] == 0).all()
    torch.testing.assert_close(outs["blocksparse"], outs["reference"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["masked_sdpa"], outs["reference"], atol=1e-5, rtol=1e-5)


def test_blocksparse_passes_gradients_to_a_learned_bias():
    """T5-style learned position bias: the fused CPU path must not drop its gradient (it falls back to autograd)."""
    from tests.helpers.formulas import formula

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    base = torch.randn(1, 2, 40, 40) * 0.5
    grads = {}
    for backend in ("reference", "blocksparse"):
        bias = base.clone().requires_grad_()
        out, _ = sparse_attention(q, k, v, "sliding_window", window=5, position_bias=bias, backend=backend,
                                  kernel_block_size=8)
        (out * torch.linspace(-1, 1, 8)).sum().backward()
        grads[backend] = bias.grad
    assert grads["blocksparse"] is not None and grads["blocksparse"].abs().sum() > 0
    allowed = torch.from_numpy(formula("sliding_window", 40, window=5))
    torch.testing.assert_close(grads["blocksparse"] * allowed, grads["reference"] * allowed, atol=1e-5, rtol=1e-4)
