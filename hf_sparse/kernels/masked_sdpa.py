"""Dense SDPA with the pattern as a boolean (or additive) mask: correct for every pattern, never faster
than dense. It is the fallback where sparsity cannot pay (short sequences) and the baseline benchmarks
compare against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .call import AttentionCall, additive_bias, combined_allowed, expand_kv_heads


def masked_sdpa_attention(call: AttentionCall) -> tuple[torch.Tensor, None]:
    """``scaled_dot_product_attention`` over the full ``Lq × Lk`` matrix with the combined mask.

    Layouts and mask semantics: :mod:`hf_sparse.kernels.call`. Rows with no allowed key return zeros
    (the row is unmasked for the fused kernel, then zeroed, so gradients stay finite).
    """
    key, value = expand_kv_heads(call)
    allowed = combined_allowed(call)
    row_any = allowed.any(dim=-1, keepdim=True)
    bias = additive_bias(call)
    if bias is None:
        attn_mask = allowed | ~row_any
    else:
        neg_inf = torch.tensor(float("-inf"), dtype=call.query.dtype, device=call.query.device)
        attn_mask = torch.where(allowed, bias.to(call.query.dtype), neg_inf)
        attn_mask = torch.where(row_any, attn_mask, torch.zeros_like(neg_inf))
    out = F.scaled_dot_product_attention(
        call.query, key, value, attn_mask=attn_mask, dropout_p=call.dropout_p, scale=call.scale_value
    )
    return out * row_any.to(out.dtype), None
