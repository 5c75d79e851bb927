"""Sparse decoding (hf_sparse.decoding): a causal model patched with ``sliding_window`` keeps only the window and
the global tokens in its KV cache, and its greedy tokens equal those of the no-cache forward of the same model."""

import pytest
import torch
from transformers import DynamicCache, DynamicLayer, GPT2Config, GPT2LMHeadModel

import hf_sparse
from hf_sparse.decoding import FullCache, WindowCacheLayer, held_bytes

NEW = 44


def _model(seed=0, n_layer=2):
    torch.manual_seed(seed)
    # a larger init spread than GPT-2's default, so that greedy tokens vary from step to step
    config = GPT2Config(vocab_size=120, n_embd=32, n_layer=n_layer, n_head=4, n_positions=256, initializer_range=0.5)
    return GPT2LMHeadModel(config).eval()


def _prompt(batch, length=20, pad=(0, 7)):
    ids = torch.randint(5, 100, (batch, length), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    for row, count in enumerate(pad[:batch]):
        ids[row, :count], mask[row, :count] = 0, 0
    return ids, mask


def _generate(model, ids, mask, **kwargs):
    return model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                          return_dict_in_generate=True, output_logits=True, **kwargs)


def _no_cache_logits(model, seq, prompt_mask):
    """Logits of one forward over the whole sequence without a cache (causal: position t's logits are what a
    no-cache forward over the first t+1 tokens gives), with generate's position ids for left padding."""
    mask = torch.cat([prompt_mask, torch.ones(seq.shape[0], seq.shape[1] - prompt_mask.shape[1],
                                              dtype=prompt_mask.dtype)], dim=1)
    with torch.no_grad():
        return model(seq, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                     use_cache=False).logits


def _check_against_no_cache(model, ids, mask, **kwargs):
    out = _generate(model, ids, mask, **kwargs)
    seq, start = out.sequences, ids.shape[1]
    ref = _no_cache_logits(model, seq[:, :-1], mask)[:, start - 1:]
    assert torch.equal(ref.argmax(-1), seq[:, start:])                      # greedy: exact token equality
    torch.testing.assert_close(torch.stack(out.logits, 1), ref, atol=1e-4, rtol=0)
    return out


@pytest.mark.parametrize("num_global", [0, 2])
@pytest.mark.parametrize("batch", [1, 2])
def test_generate_from_window_cache_equals_no_cache_forward(num_global, batch):
    window = 4
    model = hf_sparse.patch_model(_model(), "sliding_window", window=window, num_global=num_global)
    ids, mask = _prompt(batch)
    out = _check_against_no_cache(model, ids, mask)
    assert len(set(out.sequences[0, 20:].tolist())) > 3                     # the tokens do vary
    total = 20 + NEW - 1                                                    # the last token is never fed back
    for layer in out.cache.layers:
        assert isinstance(layer, WindowCacheLayer) and layer.get_seq_length() == total
        assert layer.keys.shape[-2] == window + num_global                  # O(window), not O(length)
        assert layer.positions[:, num_global:].tolist() == [list(range(total - window, total))] * batch
        firsts = [0, 7][:batch]                                             # each row's first real token
        assert layer.positions[:, :num_global].tolist() == [list(range(f, f + num_global)) for f in firsts]
    # the pattern matters: the same model unpatched generates other tokens
    hf_sparse.unpatch_model(model)
    assert not torch.equal(_generate(model, ids, mask).sequences, out.sequences)


def test_left_padded_rows_equal_each_prompt_alone():
    model = hf_sparse.patch_model(_model(1), "sliding_window", window=5, num_global=1)
    ids, mask = _prompt(2, pad=(3, 9))
    both = _generate(model, ids, mask).sequences[:, 20:]
    for row, pad in enumerate((3, 9)):
        alone = _generate(model, ids[row:row + 1, pad:], mask[row:row + 1, pad:]).sequences[:, 20 - pad:]
        assert torch.equal(alone, both[row:row + 1])


def test_longformer_and_partial_targets():
    """longformer (a sliding window with a global [CLS]) decodes from a window cache too; an untargeted layer
    keeps Transformers' full layer, and the mix still equals the no-cache forward."""
    model = hf_sparse.patch_model(_model(2, n_layer=3), "longformer", window=3, layers=[0, 2])
    ids, mask = _prompt(2)
    out = _check_against_no_cache(model, ids, mask)
    kinds = [type(layer) for layer in out.cache.layers]
    assert kinds == [WindowCacheLayer, DynamicLayer, WindowCacheLayer]
    assert out.cache.layers[1].keys.shape[-2] == 20 + NEW - 1


@pytest.mark.parametrize("name,options", [
    ("block_local", {"block_size": 4}), ("strided", {"stride": 4, "window": 2}), ("dilated", {"window": 3}),
    ("bigbird", {"block_size": 4}), ("topk_blocks", {"block_size": 4, "k": 2}),
])
def test_other_patterns_keep_the_full_cache(name, options):
    model = hf_sparse.patch_model(_model(), name, **options)
    ids, mask = _prompt(1)
    out = _generate(model, ids, mask)
    assert all(type(layer) is DynamicLayer for layer in out.cache.layers)
    assert all(layer.keys.shape[-2] == 20 + NEW - 1 for layer in out.cache.layers)
    if name != "topk_blocks":  # fixed patterns: the cached decode still equals the no-cache forward
        _check_against_no_cache(model, ids, mask)


def test_forward_with_use_cache_then_manual_steps():
    model = hf_sparse.patch_model(_model(), "sliding_window", window=4, num_global=1)
    ids, _ = _prompt(1)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache, tokens = out.cache, [out.logits[:, -1:].argmax(-1)]
        assert isinstance(cache.layers[0], WindowCacheLayer) and cache.layers[0].keys.shape[-2] == 5
        for _ in range(30):
            tokens.append(model(tokens[-1], cache=cache, use_cache=True).logits[:, -1:].argmax(-1))
        seq = torch.cat([ids, *tokens], dim=1)
        ref = model(seq[:, :-1], use_cache=False).logits[:, 19:].argmax(-1)
    assert torch.equal(ref, seq[:, 20:])
    assert cache.get_seq_length() == 50 and held_bytes(cache) <= 2 * 2 * (4 + 1 + 1) * 32 * 4  # 2 layers, k and v


def test_caches_left_alone():
    model = hf_sparse.patch_model(_model(), "sliding_window", window=4)
    ids, mask = _prompt(1)
    with torch.no_grad():
        assert model(ids, use_cache=False).cache is None
        full = model(ids, cache=FullCache(), use_cache=True).cache                # the opt-out
        assert type(full.layers[0]) is DynamicLayer and full.layers[0].keys.shape[-2] == 20
        started = DynamicCache()                                                   # a cache with content
        for idx, layer in enumerate(full.layers):
            started.update(layer.keys, layer.values, idx)
        model(ids[:, -1:], cache=started, use_cache=True)
        assert type(started.layers[0]) is DynamicLayer and started.layers[0].keys.shape[-2] == 21
    model.train()
    assert model(ids).cache is None or type(model(ids).cache.layers[0]) is DynamicLayer
    # the opt-out generates the same tokens as the window cache
    model.eval()
    want = _generate(model, ids, mask).sequences
    assert torch.equal(_generate(model, ids, mask, cache=FullCache()).sequences, want)


def test_beam_search_reorders_the_window_cache():
    model = hf_sparse.patch_model(_model(), "sliding_window", window=4, num_global=1)
    ids, mask = _prompt(2)
    window = _generate(model, ids, mask, num_beams=3)
    full = _generate(model, ids, mask, num_beams=3, cache=FullCache())
    assert isinstance(window.cache.layers[0], WindowCacheLayer)
    assert torch.equal(window.sequences, full.sequences)


def test_unpatch_restores_the_model_and_its_caches():
    model = _model()
    hooks = dict(model._forward_pre_hooks)
    ids, mask = _prompt(2)
    before = _generate(model, ids, mask)
    hf_sparse.patch_model(model, "sliding_window", window=4, num_global=1)
    _generate(model, ids, mask)
    hf_sparse.unpatch_model(model)
    assert dict(model._forward_pre_hooks) == hooks
    after = _generate(model, ids, mask)
    assert all(type(layer) is DynamicLayer for layer in after.cache.layers)
    assert torch.equal(after.sequences, before.sequences)
    assert torch.equal(torch.stack(after.logits), torch.stack(before.logits))


def test_a_window_cache_that_dropped_keys_cannot_be_cropped():
    model = hf_sparse.patch_model(_model(), "sliding_window", window=4)
    ids, _ = _prompt(1)
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
    with pytest.raises(ValueError, match="cannot be cropped.*FullCache"):
        cache.crop(-2)


def test_switching_the_implementation_during_a_cached_forward():
    """The switch hook unpatches the model inside the call, which removes the cache hook mid-call (PyTorch then
    calls it without kwargs): the forward runs dense with a plain cache, with the usual warning."""
    model = hf_sparse.patch_model(_model(), "sliding_window", window=4)
    model.set_attn_implementation("sdpa")
    ids, _ = _prompt(1)
    with pytest.warns(UserWarning, match="was unpatched"), torch.no_grad():
        cache = model(ids, use_cache=True).cache
    assert type(cache.layers[0]) is DynamicLayer and not hf_sparse.patched_modules(model)
