"""Training ``learned_gate`` gates by distillation from the dense model's block-pooled attention.

For each captured self-attention call (dense forward of the frozen model, :mod:`hf_sparse.capture`) the
target of query block ``qb`` is the share of its dense attention mass that each *choosable* key block gets
(allowed, not forced: the local and global blocks are kept anyway), and the gate's scores are fitted to it
with ``KL(target || softmax(scores))`` over those blocks. Only the gates' parameters are trained, on block
means of ``q``/``k`` computed once per batch (one dense forward per batch, however many steps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..capture import CapturedAttention, capture_attention
from ..patterns import MaskContext
from .gate import GATE_ATTR, BlockGate, LearnedGate, gates
from .select import block_mass, pool_blocks, row_geometry


@dataclass
class GateExample:
    """One captured call reduced to what a gate needs: block means of ``q``/``k`` and the target.

    Attributes:
        module: the attention module (its gate is trained on this example).
        q_mean ``[B, Hq, nq, D]`` / k_mean ``[B, Hkv, nkv, D]``: block means of the call's queries / keys.
        target: ``[B, Hq, nq, nkv]`` share of each query block's dense attention mass on each choosable key
            block (rows sum to 1 where ``rows``); choosable: ``[nq, nkv]`` allowed and not forced.
    """

    module: torch.nn.Module
    pattern: LearnedGate
    ctx: MaskContext
    q_mean: torch.Tensor
    k_mean: torch.Tensor
    target: torch.Tensor
    choosable: torch.Tensor
    rows: torch.Tensor


def make_example(capture: CapturedAttention, pattern: LearnedGate, row_weight: torch.Tensor | None = None) -> GateExample:
    """The distillation example of one captured call for ``pattern``'s block size and forced blocks."""
    ctx, bs = capture.ctx, pattern.block_size
    geometry = row_geometry(ctx, bs, pattern.num_local_blocks, pattern.num_global, capture.query.device)
    choosable = geometry.allowed & ~geometry.forced
    target = block_mass(capture.dense_probs(), bs, row_weight) * choosable
    total = target.sum(-1, keepdim=True)
    return GateExample(capture.module, pattern, ctx, pool_blocks(capture.query, bs), pool_blocks(capture.key, bs),
                       target / total.clamp(min=1e-12), choosable, total[..., 0] > 1e-6)


def example_loss(gate: BlockGate, example: GateExample) -> torch.Tensor:
    """Mean over query blocks (with choosable mass) and heads of ``KL(target || softmax(gate scores))``."""
    if not bool(example.rows.any()):
        return gate.first_bias.sum() * 0.0
    scores = gate.score_pooled(example.q_mean, example.k_mean, example.ctx, example.pattern.block_size)
    log_pred = torch.log_softmax(scores.masked_fill(~example.choosable, float("-inf")), dim=-1)
    target = example.target
    terms = torch.where(target > 0, target * (target.clamp(min=1e-12).log() - log_pred), torch.zeros_like(target))
    return terms.sum(-1)[example.rows].mean()


def gate_examples(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[GateExample]:
    """Capture ``model`` (dense) on ``inputs`` and build one example per module carrying a ``learned_gate``."""
    from ..integration import get_state

    examples = []
    for cap in capture_attention(model, inputs):
        state = get_state(cap.module)
        if isinstance(getattr(cap.module, GATE_ATTR, None), BlockGate) and isinstance(state.config.pattern, LearnedGate):
            examples.append(make_example(cap, state.config.pattern, inputs.get("attention_mask")))
    if not examples:
        raise ValueError("the model has no learned_gate gates: patch it with patch_model(model, 'learned_gate', ...)")
    return examples


def train_gates(
    model: torch.nn.Module,
    batches: Sequence[list[GateExample]],
    *,
    steps: int,
    learning_rate: float = 1e-2,
    log_every: int = 10,
    log: Any = print,
) -> list[dict[str, float]]:
    """Fit the gates of a model patched with ``learned_gate`` on precomputed examples (one list per batch,
    from :func:`gate_examples`), cycling through the batches for ``steps`` Adam steps. The rest of the model
    is never touched. Returns ``[{step, loss}]``."""
    params = [p for g in gates(model).values() for p in g.parameters()]
    if not params or not batches:
        raise ValueError("nothing to train: the model has no learned_gate gates or no batch was given")
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    history = []
    for step in range(steps):
        examples = batches[step % len(batches)]
        loss = torch.stack([example_loss(getattr(ex.module, GATE_ATTR), ex) for ex in examples]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"step": step + 1, "loss": loss.item()})
        if log is not None and (step + 1) % log_every == 0:
            log(f"step {step + 1:4d}/{steps}  distillation KL {loss.item():.4f}")
    return history
