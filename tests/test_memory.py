"""Training memory: the block-sparse kernel keeps no more activations for backward than dense SDPA."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

import hf_sparse


def _saved_bytes(model: torch.nn.Module, length: int) -> int:
    """Bytes of the distinct storages autograd saves for backward in one training forward pass."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(5, 1000, (1, length), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=torch.tensor([1])).loss
    loss.backward()
    return sum(storages.values())


def test_blocksparse_training_saves_no_more_than_dense_sdpa():
    length = 1024
    config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=length,
                        vocab_size=1000, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).train()
    dense = _saved_bytes(model, length)
    hf_sparse.patch_model(model, "sliding_window", window=64, num_global=1, backend="blocksparse")
    sparse = _saved_bytes(model, length)
    assert hf_sparse.last_backends(model) and set(hf_sparse.last_backends(model).values()) == {"blocksparse"}
    assert sparse <= dense, f"blocksparse saves {sparse / 2**20:.1f} MB for backward, dense SDPA {dense / 2**20:.1f} MB"


def test_a_patched_model_keeps_only_its_plans_boolean_masks_between_calls():
    """After a cold inference forward the only PyTorch memory still held is the cached plan: its boolean tile
    masks and index tables. The additive (float) masks PyTorch's fused CPU kernel takes are made per call and
    freed with it (they were cached beside the plan before: four times the boolean bytes, for the whole run)."""
    from hf_sparse.kernels.plan import clear_plan_cache, static_plan
    from hf_sparse.patterns import MaskContext, clear_caches, make_pattern
    from hf_sparse.profiling import PeakAllocated

    length, window = 2048, 256
    config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=length,
                        vocab_size=1000, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    hf_sparse.patch_model(model, "sliding_window", window=window, backend="blocksparse")
    ids = torch.randint(5, 1000, (1, length), generator=torch.Generator().manual_seed(0))
    clear_caches()
    clear_plan_cache()
    with torch.no_grad(), PeakAllocated() as alloc:
        model(input_ids=ids)
    plan = static_plan(make_pattern("sliding_window", window=window), MaskContext.for_length(length), 128, "cpu")
    masks = sum(g.tile_mask.untyped_storage().nbytes() for g in plan.groups if g.tile_mask is not None)
    assert masks > 0 and all(g.tile_mask.dtype == torch.bool for g in plan.groups if g.tile_mask is not None)
    held = alloc.end_mb * 2**20
    assert held <= masks + 64 * 1024, f"{held / 1024:.0f} KiB held after the call; the plan's masks are {masks / 1024:.0f} KiB"
