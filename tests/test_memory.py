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
