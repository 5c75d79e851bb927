"""Block-random patterns: ``random`` and BigBird (window + global + random key blocks).

Random key blocks are drawn per absolute query block from a generator seeded with ``(seed, query block)``,
so the choice is reproducible, independent of the batch, and identical between a full forward pass and
cached decode steps. Causal models draw only among key blocks at or before the query block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import MaskContext, MaskMod, Pattern, check_int
from .registry import register_pattern


def _draw(candidates: torch.Tensor, k: int, seed: int, row: int) -> torch.Tensor:
    """``k`` distinct entries of ``candidates`` chosen by a generator seeded from ``(seed, row)``."""
    if k <= 0 or candidates.numel() == 0:
        return candidates[:0]
    gen = torch.Generator().manual_seed((seed * 1_000_003 + row) % (2**63))
    order = torch.randperm(candidates.numel(), generator=gen)
    return candidates[order[:k]]


def _block_table_mask(table: torch.Tensor, block_size: int) -> MaskMod:
    """Mask function reading a ``[n_blocks, n_blocks]`` boolean block table (kept on each device used)."""
    per_device: dict[torch.device, torch.Tensor] = {table.device: table}

    def mask(b, h, q_idx, kv_idx):
        dev = q_idx.device
        if dev not in per_device:
            per_device[dev] = table.to(dev)
        blocks = per_device[dev]
        return blocks[torch.div(q_idx, block_size, rounding_mode="floor"),
                      torch.div(kv_idx, block_size, rounding_mode="floor")]

    return mask


def _n_blocks(ctx: MaskContext, block_size: int) -> int:
    return max(1, -(-ctx.kv_len // block_size))


@register_pattern
@dataclass(frozen=True)
class RandomBlocks(Pattern):
    """``num_random`` random key blocks of ``block_size`` per query block, fixed by ``seed``."""

    name: ClassVar[str] = "random"
    num_random: int = 3
    block_size: int = 64
    seed: int = 0

    def _validate(self) -> None:
        check_int(self.name, "num_random", self.num_random, minimum=1)
        check_int(self.name, "block_size", self.block_size, minimum=1)
        check_int(self.name, "seed", self.seed, minimum=0)

    def block_table(self, ctx: MaskContext) -> torch.Tensor:
        """``[n_blocks, n_blocks]`` bool: key blocks (columns) chosen for each absolute query block (rows)."""
        n = _n_blocks(ctx, self.block_size)
        table = torch.zeros(n, n, dtype=torch.bool)
        for qb in range(n):
            candidates = torch.arange(qb + 1 if ctx.causal else n)
            table[qb, _draw(candidates, self.num_random, self.seed, qb)] = True
        return table

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        return _block_table_mask(self.block_table(ctx), self.block_size)


@register_pattern
@dataclass(frozen=True)
class BigBird(Pattern):
    """BigBird (ITC): per query block, ``num_window_blocks`` neighbouring key blocks (centred), the first
    ``num_global_blocks`` blocks as global rows and columns, and ``num_random_blocks`` random key blocks
    drawn from the remaining ones."""

    name: ClassVar[str] = "bigbird"
    block_size: int = 64
    num_window_blocks: int = 3
    num_global_blocks: int = 2
    num_random_blocks: int = 3
    seed: int = 0

    def _validate(self) -> None:
        check_int(self.name, "block_size", self.block_size, minimum=1)
        check_int(self.name, "num_window_blocks", self.num_window_blocks, minimum=1)
        check_int(self.name, "num_global_blocks", self.num_global_blocks, minimum=0)
        check_int(self.name, "num_random_blocks", self.num_random_blocks, minimum=0)
        check_int(self.name, "seed", self.seed, minimum=0)

    def block_table(self, ctx: MaskContext) -> torch.Tensor:
        """``[n_blocks, n_blocks]`` bool block table: window | global | random."""
        n = _n_blocks(ctx, self.block_size)
        idx = torch.arange(n)
        left, right = (self.num_window_blocks - 1) // 2, self.num_window_blocks // 2
        diff = idx[None, :] - idx[:, None]
        table = (diff >= -left) & (diff <= right)
        g = self.num_global_blocks
        table[:g, :] = True
        table[:, :g] = True
        for qb in range(g, n):
            limit = qb + 1 if ctx.causal else n
            candidates = idx[:limit][~table[qb, :limit]]
            table[qb, _draw(candidates, self.num_random_blocks, self.seed, qb)] = True
        return table

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        return _block_table_mask(self.block_table(ctx), self.block_size)
