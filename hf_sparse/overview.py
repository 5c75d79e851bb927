"""``summary(model)``: what hf_sparse did to a model, as text."""

from __future__ import annotations

import torch

from .integration import get_state
from .models import attention_sites, unwrap


def summary(model: torch.nn.Module) -> str:
    """A printable report of the sparse settings of ``model``.

    The first line counts the patched modules among the model's self-attention modules (cross-attention
    always stays dense); then one line per patched module: its name, its pattern
    (:meth:`~hf_sparse.patterns.Pattern.describe`), the backend it asks for, and the kernel that served its
    latest call with the number of calls (``-`` before the first call). A model without patched modules
    gets a single line saying so. A PEFT wrapper is reported as the Transformers model inside it.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"summary expects a torch.nn.Module, got {type(model).__name__}; pass the model itself")
    model = unwrap(model)  # names relative to the Transformers model inside a PEFT wrapper, as patch_model records
    kind = type(model).__name__
    sites = attention_sites(model)
    n_self = sum(not s.cross for s in sites)
    n_cross = len(sites) - n_self
    cross = f"; {n_cross} cross-attention module(s) stay dense" if n_cross else ""
    rows = []
    for name, module in model.named_modules():
        state = get_state(module)
        if state is not None:
            served = f"{state.last_backend} ({state.calls} call{'' if state.calls == 1 else 's'})" if state.calls else "-"
            rows.append((name, state.config.pattern.describe(), state.config.backend, served))
    if not rows:
        return f"hf_sparse: nothing is patched in {kind} (0 of {n_self} self-attention modules){cross}"
    header = f"hf_sparse: {len(rows)} of {n_self} self-attention modules of {kind} patched{cross}"
    titles = ("module", "pattern", "backend", "last served by")
    widths = [max(len(r[i]) for r in [titles, *rows]) for i in range(3)]
    lines = [header, *("  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
                       for r in [titles, *rows])]
    return "\n".join(lines)
