"""Interpretability and tuning aid: how much of the dense model's attention a sparse pattern keeps.

**Attention-mass recall** of a pattern at one layer and head is the fraction of the dense model's attention
probability that falls on pairs the pattern allows::

    recall(l, h) = Σ_{b, i} w[b, i] Σ_j p[b, h, i, j]·allowed[b, h, i, j]  /  Σ_{b, i} w[b, i] Σ_j p[b, h, i, j]

with ``p`` the dense probabilities of layer ``l`` on real inputs, ``allowed`` the pattern's mask evaluated on
the same ``q``/``k`` (fixed patterns: their mask; data-dependent ones: bound exactly as the kernels bind them)
and ``w`` 1 for real query tokens, 0 for padding. It is 1 for ``dense``; a head with low recall is one where
the pattern cuts away attention the pretrained model relies on. **Density** is the fraction of the pairs the
dense model attends (its padding mask and causality) that the pattern keeps.

    captures = capture_attention(model, inputs)
    table, pictures = analyze(captures, {"window": make_pattern("sliding_window", window=64)})
    print(table.format())
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hf_sparse.capture import CapturedAttention, capture_attention
from hf_sparse.learned.select import block_mass, row_geometry, select_blocks
from hf_sparse.patterns import Pattern

__all__ = ["BlockOracle", "LayerPicture", "RecallTable", "analyze", "attention_recall", "capture_attention",
           "head_recall"]


@dataclass(frozen=True)
class BlockOracle:
    """The best possible block routing: per query block and head, the forced blocks (as ``topk_blocks``)
    plus the ``k`` key blocks with the most dense attention mass. An upper bound for learned routing at the
    same budget; it needs the dense attention, so it is an analysis tool, not a pattern."""

    block_size: int = 64
    k: int = 2
    num_local_blocks: int = 1
    num_global: int = 1

    def describe(self) -> str:
        return (f"block_oracle(block_size={self.block_size}, k={self.k}, num_local_blocks={self.num_local_blocks}, "
                f"num_global={self.num_global})")

    def allowed(self, capture: CapturedAttention, probs: torch.Tensor, row_weight: torch.Tensor) -> torch.Tensor:
        ctx, bs = capture.ctx, self.block_size
        geometry = row_geometry(ctx, bs, self.num_local_blocks, self.num_global, probs.device)
        table = select_blocks(block_mass(probs, bs, row_weight), geometry, self.k)
        tokens = table.repeat_interleave(bs, -2)[..., : ctx.q_len, :].repeat_interleave(bs, -1)[..., : ctx.kv_len]
        if ctx.causal:
            q = torch.arange(ctx.q_len, device=probs.device)[:, None] + ctx.q_offset
            tokens = tokens & (torch.arange(ctx.kv_len, device=probs.device)[None, :] <= q)
        return tokens


Evaluated = Pattern | BlockOracle


def head_recall(probs: torch.Tensor, allowed: torch.Tensor, model_allowed: torch.Tensor,
                row_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head ``(recall [H], density [H])`` from dense ``probs [B, H, Lq, Lk]``, the pattern's ``allowed``
    and the model's ``model_allowed`` masks (both broadcastable to ``probs``) and ``row_weight [B, Lq]``."""
    w = row_weight.float()[:, None, :]
    allowed = allowed.expand_as(probs)
    kept = (probs * allowed).sum(-1)
    recall = (kept * w).sum((0, 2)) / (probs.sum(-1) * w).sum((0, 2)).clamp(min=1e-30)
    attended = model_allowed.expand_as(probs)
    density = ((allowed & attended).sum(-1) * w).sum((0, 2)) / (attended.sum(-1) * w).sum((0, 2)).clamp(min=1)
    return recall, density.float()


@dataclass
class LayerPicture:
    """What one layer's heads kept, pooled to at most ``cells × cells`` for drawing (one example).

    Attributes:
        mass: ``[H, rows, cols]`` dense attention probability, averaged over each cell.
        kept: ``[H, rows, cols]`` fraction of each cell the pattern keeps.
        recall: ``[H]`` recall of each head on the whole batch.
    """

    name: str
    layer: int | None
    mass: np.ndarray
    kept: np.ndarray
    recall: np.ndarray


def _pool(x: torch.Tensor, factor: int) -> np.ndarray:
    """``[H, Lq, Lk]`` -> ``[H, ceil(Lq/f), ceil(Lk/f)]`` cell means (partial cells average their real part)."""
    if factor == 1:
        return x.float().cpu().numpy()
    h, lq, lk = x.shape
    pad = (0, -lk % factor, 0, -lq % factor)
    sums = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x.float(), pad)[None], factor, divisor_override=1)[0]
    ones = torch.nn.functional.pad(torch.ones(1, lq, lk, device=x.device), pad)
    counts = torch.nn.functional.avg_pool2d(ones[None], factor, divisor_override=1)[0]
    return (sums / counts).cpu().numpy()


@dataclass
class RecallTable:
    """Recall and density per (pattern, layer, head). ``rows`` are dicts with keys ``pattern``, ``name``
    (family), ``describe``, ``layer``, ``module``, ``head``, ``recall``, ``density``."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def labels(self) -> list[str]:
        return list(dict.fromkeys(r["pattern"] for r in self.rows))

    def layers(self) -> list[Any]:
        return list(dict.fromkeys(r["layer"] for r in self.rows))

    def matrix(self, label: str, key: str = "recall") -> np.ndarray:
        """``[layers, heads]`` array of ``key`` for pattern ``label``."""
        rows = [r for r in self.rows if r["pattern"] == label]
        layers = list(dict.fromkeys(r["layer"] for r in rows))
        heads = max(r["head"] for r in rows) + 1
        out = np.full((len(layers), heads), np.nan)
        for r in rows:
            out[layers.index(r["layer"]), r["head"]] = r[key]
        return out

    def summary(self) -> list[dict[str, Any]]:
        """One dict per pattern: mean recall and density over layers and heads, worst head, per-layer means."""
        out = []
        for label in self.labels():
            rec, den = self.matrix(label), self.matrix(label, "density")
            first = next(r for r in self.rows if r["pattern"] == label)
            out.append({"pattern": label, "name": first["name"], "describe": first["describe"],
                        "density": float(np.nanmean(den)), "recall": float(np.nanmean(rec)),
                        "worst_head": float(np.nanmin(rec)), "per_layer": [float(v) for v in np.nanmean(rec, 1)]})
        return out

    def format(self) -> str:
        """A printable table: one line per pattern, per-layer mean recall in the last columns."""
        summary = self.summary()
        width = max(len(s["pattern"]) for s in summary)
        head = f"{'pattern':{width}s}  density  recall  worst  " + " ".join(f"{'L' + str(x):>5s}" for x in self.layers())
        lines = [head, "-" * len(head)]
        for s in summary:
            layers = " ".join(f"{v:5.3f}" for v in s["per_layer"])
            lines.append(f"{s['pattern']:{width}s}  {s['density']:6.1%}  {s['recall']:6.3f}  {s['worst_head']:5.3f}  {layers}")
        return "\n".join(lines)

    def to_csv(self, path: str | os.PathLike) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)

    def to_json(self, path: str | os.PathLike, *, rows: bool = True, **extra: Any) -> None:
        """``extra`` fields, the :meth:`summary` and (if ``rows``) every row."""
        with open(path, "w") as f:
            json.dump({**extra, "summary": self.summary(), **({"rows": self.rows} if rows else {})}, f, indent=1)


def _row_weight(capture: CapturedAttention, query_mask: torch.Tensor | None) -> torch.Tensor:
    b, _, lq, _ = capture.query.shape
    if query_mask is not None and tuple(query_mask.shape) == (b, lq):
        return query_mask.to(capture.query.device).float()
    return torch.ones(b, lq, device=capture.query.device)


def analyze(
    captures: list[CapturedAttention],
    patterns: Mapping[str, Evaluated],
    *,
    query_mask: torch.Tensor | None = None,
    picture_index: int | None = 0,
    cells: int = 64,
) -> tuple[RecallTable, dict[str, list[LayerPicture]]]:
    """Recall and density of each pattern at each captured layer and head, plus pictures of one example.

    Args:
        captures: from :func:`~hf_sparse.capture.capture_attention`.
        patterns: ``{label: pattern}``; patterns may be fixed, data-dependent (a ``learned_gate`` uses the
            captured module's gate) or a :class:`BlockOracle`.
        query_mask: ``[B, L]`` 1 for real tokens (the tokenizer's ``attention_mask``); padding rows are left out.
        picture_index: the batch element drawn (``None``: no pictures); its padding is cropped away.
        cells: the pictures are pooled to at most ``cells × cells``.
    """
    table = RecallTable()
    pictures: dict[str, list[LayerPicture]] = {label: [] for label in patterns}
    for capture in captures:
        probs = capture.dense_probs()
        weight = _row_weight(capture, query_mask)
        attended = capture.model_allowed()
        if picture_index is not None:
            q_keep = int(weight[picture_index].sum())
            kv_keep = capture.ctx.kv_len if query_mask is None or capture.ctx.q_len != capture.ctx.kv_len else q_keep
            factor = max(1, -(-max(q_keep, kv_keep) // cells))
            mass = _pool(probs[picture_index, :, :q_keep, :kv_keep], factor)
        for label, pattern in patterns.items():
            if isinstance(pattern, BlockOracle):
                allowed = pattern.allowed(capture, probs, weight)
            else:
                allowed = capture.pattern_allowed(pattern)
            recall, density = head_recall(probs, allowed, attended, weight)
            name = "block_oracle" if isinstance(pattern, BlockOracle) else pattern.name
            for h in range(recall.shape[0]):
                table.rows.append({"pattern": label, "name": name, "describe": pattern.describe(),
                                   "layer": capture.layer, "module": capture.name, "head": h,
                                   "recall": float(recall[h]), "density": float(density[h])})
            if picture_index is not None:
                one = allowed.expand_as(probs)[picture_index, :, :q_keep, :kv_keep]
                pictures[label].append(LayerPicture(capture.name, capture.layer, mass, _pool(one, factor),
                                                    recall.cpu().numpy()))
    return table, pictures


def attention_recall(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor],
                     patterns: Mapping[str, Evaluated]) -> RecallTable:
    """Capture ``model`` on ``inputs`` (dense) and return the recall table of ``patterns`` (padding rows of
    ``inputs["attention_mask"]`` left out)."""
    table, _ = analyze(capture_attention(model, inputs), patterns, query_mask=inputs.get("attention_mask"),
                       picture_index=None)
    return table
