"""The oracle: dense attention with the pattern mask applied explicitly. Slow and obviously right."""

from __future__ import annotations

import torch

from .call import AttentionCall, additive_bias, combined_allowed, expand_kv_heads


def reference_attention(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masked dense attention: ``softmax(q kᵀ·scale + bias, masked to -inf) · v`` computed in float32 (float64 inputs stay float64).

    Layouts and mask semantics: :mod:`hf_sparse.kernels.call`. Attention dropout with ``call.dropout_p``
    is applied to the probabilities (as Transformers' eager attention does). Rows with no allowed key give
    zero output and zero gradient. Returns ``(out [B, Hq, Lq, Dv], weights [B, Hq, Lq, Lk] or None)``.
    """
    key, value = expand_kv_heads(call)
    compute = torch.promote_types(call.query.dtype, torch.float32)  # fp32 at least, fp64 stays fp64
    q = call.query.to(compute)
    scores = torch.matmul(q, key.to(compute).transpose(-1, -2)) * call.scale_value
    bias = additive_bias(call)
    if bias is not None:
        scores = scores + bias.to(compute)
    allowed = combined_allowed(call).expand_as(scores)
    row_any = allowed.any(dim=-1, keepdim=True)
    # Fully masked rows get finite scores (softmax stays finite, gradients stay finite) and are zeroed after.
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~row_any, 0.0)
    probs = torch.softmax(scores, dim=-1) * row_any
    if call.dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=call.dropout_p, training=True)
    out = torch.matmul(probs, value.to(compute)).to(call.query.dtype)
    weights = probs.to(call.query.dtype) if call.need_weights else None
    return out, weights
