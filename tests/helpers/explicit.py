"""An eager attention function with an explicit mask, registered under a test-only name.

It is the independent oracle for model-level tests: plain matmul + softmax with the pattern mask given as a
numpy formula (tests/helpers/formulas.py), combined with the model's own mask. Only modules listed in ``targets``
get the pattern; all others (cross-attention, untargeted layers) attend densely.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "hf_sparse_test_explicit"
MaskFn = Callable[[int, int, int, bool], np.ndarray]  # (q_len, kv_len, q_offset, causal) -> bool matrix


def explicit_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                       position_bias=None, **kwargs):
    mask_fn: MaskFn | None = getattr(module, "_explicit_mask_fn", None)
    causal = is_causal if is_causal is not None else bool(getattr(module, "is_causal", False))
    lq, lk = query.shape[2], key.shape[2]
    rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = (query.double() @ key.double().transpose(-1, -2)) * scale
    if position_bias is not None:
        scores = scores + position_bias.double()
    if mask_fn is not None:
        allowed = torch.from_numpy(mask_fn(lq, lk, lk - lq, causal)).to(query.device)
    else:
        allowed = torch.ones(lq, lk, dtype=torch.bool, device=query.device)
        if causal and attention_mask is None and lq > 1:
            allowed = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
    if attention_mask is not None:
        allowed = allowed & attention_mask
    allowed = allowed.expand_as(scores)
    row_any = allowed.any(-1, keepdim=True)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~row_any, 0.0)
    probs = torch.softmax(scores, -1) * row_any
    out = (probs @ value.double()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, explicit_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def explicit_copy(model: torch.nn.Module, mask_fn: MaskFn, targets: list[str]) -> torch.nn.Module:
    """A deep copy of the (unpatched) ``model`` whose modules named in ``targets`` use ``mask_fn``."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation(NAME)
    modules = dict(ref.named_modules())
    for name in targets:
        modules[name]._explicit_mask_fn = mask_fn
    return ref
