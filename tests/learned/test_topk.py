"""topk_blocks: its selection against an independent loop implementation, its output against the reference
kernel run with an explicit mask built from that selection, causality, determinism, gradients, GQA, decode."""

from __future__ import annotations

import math

import pytest
import torch

import hf_sparse
from hf_sparse.integration import get_state
from hf_sparse.kernels import AttentionCall, reference_attention, sparse_attention
from hf_sparse.patterns import Dense, MaskContext, allowed_matrix, make_pattern
from tests.helpers.models import model_inputs, run_model, tiny_model


def _blocks_by_loops(q, k, ctx, bs, top, n_local, n_global):
    """Independent selection: block means, dot products, forced blocks, then the best ``top`` by
    (score desc, index asc), with every row keeping max(forced) + top blocks where it can."""
    batch, hq, lq, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    nq, nkv = math.ceil(lq / bs), math.ceil(lk / bs)
    kept = set()
    forced_rows, allowed_rows = {}, {}
    for qb in range(nq):
        rows = range(qb * bs, min(qb * bs + bs, lq))
        first, last = ctx.q_offset + rows[0], ctx.q_offset + rows[-1]
        allowed = [j for j in range(nkv) if not ctx.causal or j * bs <= last]
        lo = first // bs - ((n_local - 1) if ctx.causal else (n_local - 1) // 2)
        hi = last // bs + (0 if ctx.causal else n_local // 2)
        forced = {j for j in allowed if lo <= j <= hi or (n_global and j * bs < min(n_global, lk))}
        forced_rows[qb], allowed_rows[qb] = forced, allowed
    width = min(nkv, max(len(f) for f in forced_rows.values()) + top)
    for b in range(batch):
        for h in range(hq):
            g = h // (hq // hkv)
            for qb in range(nq):
                qm = q[b, h, qb * bs:(qb + 1) * bs].double().mean(0)
                scores = {j: float(qm @ k[b, g, j * bs:(j + 1) * bs].double().mean(0)) for j in allowed_rows[qb]}
                forced = forced_rows[qb]
                rest = sorted((j for j in allowed_rows[qb] if j not in forced), key=lambda j: (-scores[j], j))
                for j in list(forced) + rest[: max(0, width - len(forced))]:
                    kept.add((b, h, qb, j))
    return kept


def _explicit_mask(kept, shape, ctx, bs):
    """``[B, H, Lq, Lk]`` bool from a set of kept (b, h, q block, kv block), by loops."""
    batch, heads, lq, lk = shape
    mask = torch.zeros(shape, dtype=torch.bool)
    for b, h, qb, j in kept:
        mask[b, h, qb * bs:(qb + 1) * bs, j * bs:(j + 1) * bs] = True
    if ctx.causal:
        q_pos = torch.arange(lq)[:, None] + ctx.q_offset
        mask &= torch.arange(lk)[None, :] <= q_pos
    return mask


CASES = [  # (B, Hq, Hkv, Lq, Lk, causal, block, k, local, global)
    (2, 4, 2, 75, 75, False, 16, 2, 1, 1),
    (2, 4, 4, 75, 75, True, 16, 2, 1, 1),
    (1, 3, 1, 61, 61, False, 8, 3, 3, 0),
    (1, 2, 2, 61, 61, True, 8, 1, 2, 5),
    (2, 4, 2, 1, 70, True, 16, 2, 1, 1),     # one decode step at position 69
    (1, 2, 1, 9, 53, True, 8, 2, 1, 1),      # a chunk of 9 queries after a 44-token cache (unaligned)
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_topk_equals_reference_with_its_explicitly_built_selection(case):
    batch, hq, hkv, lq, lk, causal, bs, top, n_local, n_global = case
    gen = torch.Generator().manual_seed(sum(case[:5]))
    q = torch.randn(batch, hq, lq, 16, generator=gen, requires_grad=True)
    k = torch.randn(batch, hkv, lk, 16, generator=gen, requires_grad=True)
    v = torch.randn(batch, hkv, lk, 16, generator=gen, requires_grad=True)
    pattern = make_pattern("topk_blocks", block_size=bs, k=top, num_local_blocks=n_local, num_global=n_global)
    ctx = MaskContext(lq, lk, lk - lq, causal=causal)

    table = pattern.select(q, k, ctx)
    kept = {tuple(i.tolist()) for i in table.nonzero()}
    assert kept == _blocks_by_loops(q.detach(), k.detach(), ctx, bs, top, n_local, n_global)
    counts = table.sum(-1)
    if not causal:
        assert (counts == counts.max()).all(), "every query-block row keeps the same number of blocks"

    explicit = _explicit_mask(kept, (batch, hq, lq, lk), ctx, bs)
    want, _ = reference_attention(AttentionCall(q, k, v, Dense(), MaskContext(lq, lk, lk - lq), attention_mask=explicit))
    for backend in ("reference", "masked_sdpa", "blocksparse", "auto"):
        got, _ = sparse_attention(q, k, v, pattern, is_causal=causal, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        got, _ = sparse_attention(q, k, v, pattern, is_causal=causal, backend="flex")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # gradients flow through the attention over the kept blocks (and nowhere else), in every trainable kernel
    ref_grads = torch.autograd.grad(want.square().sum(), (q, k, v))
    for backend in ("masked_sdpa", "blocksparse"):
        got, _ = sparse_attention(q, k, v, pattern, is_causal=causal, backend=backend)
        grads = torch.autograd.grad(got.square().sum(), (q, k, v))
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
        assert grads[0].abs().sum() > 0 and grads[2].abs().sum() > 0


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3]], ids=["bidirectional", "causal", "causal-5-global"])
def test_global_queries_keep_every_block_they_may_see(case):
    """With ``global_queries`` the query blocks holding the first ``num_global`` tokens keep every block they may
    see (the loops' selection elsewhere); outputs and gradients match the reference on that explicit mask."""
    batch, hq, hkv, lq, lk, causal, bs, top, n_local, n_global = case
    gen = torch.Generator().manual_seed(7 + lq)
    q = torch.randn(batch, hq, lq, 16, generator=gen, requires_grad=True)
    k = torch.randn(batch, hkv, lk, 16, generator=gen, requires_grad=True)
    v = torch.randn(batch, hkv, lk, 16, generator=gen, requires_grad=True)
    pattern = make_pattern("topk_blocks", block_size=bs, k=top, num_local_blocks=n_local, num_global=n_global,
                           global_queries=True)
    ctx = MaskContext(lq, lk, lk - lq, causal=causal)
    nkv = math.ceil(lk / bs)
    kept = {key for key in _blocks_by_loops(q.detach(), k.detach(), ctx, bs, top, n_local, n_global)
            if key[2] * bs >= n_global}
    kept |= {(b, h, qb, j) for b in range(batch) for h in range(hq) for qb in range(math.ceil(n_global / bs))
             for j in range(nkv) if not causal or j * bs <= (qb + 1) * bs - 1}
    assert {tuple(i.tolist()) for i in pattern.select(q, k, ctx).nonzero()} == kept

    explicit = _explicit_mask(kept, (batch, hq, lq, lk), ctx, bs)
    want, _ = reference_attention(AttentionCall(q, k, v, Dense(), MaskContext(lq, lk, lk - lq), attention_mask=explicit))
    ref_grads = torch.autograd.grad(want.square().sum(), (q, k, v))
    for backend in ("masked_sdpa", "blocksparse"):
        got, _ = sparse_attention(q, k, v, pattern, is_causal=causal, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        grads = torch.autograd.grad(got.square().sum(), (q, k, v))
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)



def test_global_query_rows_get_their_own_plan_group():
    """The block-sparse plan puts the rows that keep every block in their own group, so the other rows still
    read ``forced + k`` blocks (not all of them)."""
    from hf_sparse.kernels.plan import dynamic_plan

    q, k = torch.randn(2, 3, 256, 8), torch.randn(2, 3, 256, 8)
    ctx = MaskContext.for_length(256)
    pattern = make_pattern("topk_blocks", block_size=16, k=2, num_global=20, global_queries=True)
    plan = dynamic_plan(*pattern.bind_dynamic(q, k, ctx, 16), ctx)
    groups = sorted((g.rows.tolist(), g.slots) for g in plan.groups)
    assert groups == [([0, 1], 16), (list(range(2, 16)), 1 + 2 + 2)]  # local, 2 global blocks, k
    assert plan.computed_fraction == pytest.approx((2 * 16 + 14 * 5) / 16 ** 2)


def test_global_queries_option_is_checked():
    with pytest.raises(ValueError, match="global_queries=True needs global tokens; set num_global >= 1"):
        make_pattern("topk_blocks", num_global=0, global_queries=True)
    with pytest.raises(ValueError, match="global_queries must be true or false, got 'yes'"):
        make_pattern("topk_blocks", global_queries="yes")


def test_layout_covers_the_mask_and_marks_full_tiles():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 83, 8), torch.randn(2, 2, 83, 8)
    pattern = make_pattern("topk_blocks", block_size=16, k=2)
    for causal, tile in [(False, 16), (True, 16), (True, 32), (False, 8)]:
        ctx = MaskContext.for_length(83, causal=causal)
        mask_mod, layout = pattern.bind_dynamic(q, k, ctx, tile)
        b = torch.arange(2)[:, None, None, None]
        h = torch.arange(4)[None, :, None, None]
        allowed = mask_mod(b, h, torch.arange(83)[None, None, :, None], torch.arange(83)[None, None, None, :])
        n = math.ceil(83 / tile)
        assert layout.active.shape == (2, 4, n, n) and layout.block_size == tile
        padded = torch.nn.functional.pad(allowed, (0, n * tile - 83, 0, n * tile - 83))
        tiles = padded.view(2, 4, n, tile, n, tile)
        any_allowed = tiles.any(5).any(3)
        assert not (any_allowed & ~layout.active).any(), "every allowed pair lies in an active tile"
        valid = torch.nn.functional.pad(torch.ones(83, 83, dtype=torch.bool), (0, n * tile - 83, 0, n * tile - 83))
        all_allowed = (tiles | ~valid.view(1, 1, n, tile, n, tile)).all(5).all(3)
        assert torch.equal(layout.full, all_allowed & layout.active)
        if tile == 16:
            assert torch.equal(layout.active, any_allowed)


def test_causal_selection_never_looks_ahead():
    """No future block is chosen, no kv > q pair is allowed, and perturbing everything from a block on leaves
    the outputs of all earlier blocks unchanged."""
    torch.manual_seed(1)
    bs, length = 8, 64
    q, k, v = (torch.randn(2, 3, length, 16) for _ in range(3))
    pattern = make_pattern("topk_blocks", block_size=bs, k=2)
    ctx = MaskContext.for_length(length, causal=True)
    table = pattern.select(q, k, ctx)
    future = torch.arange(8)[None, :] > torch.arange(8)[:, None]
    assert not (table & future).any()
    _, weights = sparse_attention(q, k, v, pattern, is_causal=True, need_weights=True)
    assert (weights[..., torch.ones(length, length, dtype=torch.bool).triu(1)] == 0).all()
    out, _ = sparse_attention(q, k, v, pattern, is_causal=True)
    for cut_block in (2, 5):
        cut = cut_block * bs
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for t in (q2, k2, v2):
            t[:, :, cut:] = 10 * torch.randn_like(t[:, :, cut:])
        out2, _ = sparse_attention(q2, k2, v2, pattern, is_causal=True)
        torch.testing.assert_close(out2[:, :, :cut], out[:, :, :cut], atol=0, rtol=0)


def test_selection_is_deterministic_and_ties_go_to_lower_blocks():
    torch.manual_seed(2)
    q, k = torch.randn(1, 2, 96, 8), torch.randn(1, 2, 96, 8)
    pattern = make_pattern("topk_blocks", block_size=16, k=2, num_global=0)
    ctx = MaskContext.for_length(96)
    assert torch.equal(pattern.select(q, k, ctx), pattern.select(q.clone(), k.clone(), ctx))
    flat = pattern.select(torch.ones(1, 1, 96, 8), torch.ones(1, 1, 96, 8), ctx)[0, 0]  # every score equal
    for qb in range(6):
        others = [j for j in range(6) if j != qb][:2]
        assert flat[qb].nonzero().flatten().tolist() == sorted([qb, *others])


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="k must be >= 0, got -1"):
        make_pattern("topk_blocks", k=-1)
    with pytest.raises(ValueError, match="nothing is kept"):
        make_pattern("topk_blocks", k=0, num_local_blocks=0, num_global=0)
    with pytest.raises(ValueError, match="cannot be combined"):
        make_pattern("topk_blocks") | make_pattern("dense")
    with pytest.raises(ValueError, match="chooses its blocks from the data"):
        allowed_matrix(make_pattern("topk_blocks"), MaskContext.for_length(8))


@pytest.mark.parametrize("family", ["bert", "gpt2", "vit", "llama"])
def test_topk_in_models_matches_across_backends_with_padding(family):
    model = hf_sparse.patch_model(tiny_model(family), "topk_blocks", block_size=8, k=1)
    inputs = model_inputs(family, length=45, pad_from=30)
    out = run_model(model, inputs)
    assert torch.isfinite(out).all()
    dense = run_model(hf_sparse.unpatch_model(tiny_model(family)), inputs)
    assert (out - dense).abs().max() > 1e-4, "the pattern must change the output"
    hf_sparse.unpatch_model(model)
    hf_sparse.patch_model(model, "topk_blocks", block_size=8, k=1, backend="reference")
    torch.testing.assert_close(run_model(model, inputs), out, atol=1e-5, rtol=0)


def test_gpt2_generate_with_topk_runs_cached_decode_steps_sparsely():
    """Decode steps (one query after a cache) go through the sparse path; their kernel-level correctness is
    case4/case5 of test_topk_equals_reference_with_its_explicitly_built_selection."""
    model = hf_sparse.patch_model(tiny_model("gpt2", seed=5), "topk_blocks", block_size=4, k=1)
    prompt = torch.randint(5, 100, (2, 13), generator=torch.Generator().manual_seed(2))
    out = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                         output_scores=True)
    assert out.sequences.shape == (2, 23)
    assert torch.isfinite(torch.stack(out.scores)).all()
    states = [state for m in model.modules() if (state := get_state(m)) is not None]
    assert all(state.calls == 10 for state in states), [state.calls for state in states]  # prefill + 9 decode steps
