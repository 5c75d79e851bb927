"""``topk_blocks``: parameter-free content routing. Each query block keeps its local key block(s), the
global block(s) and the ``k`` key blocks whose mean key best matches its mean query, per head.

The selection is discrete and computed without gradients; gradients flow through the attention over the
kept blocks. With a causal model no block in the future is chosen and no ``kv > q`` pair is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..patterns import BlockLayout, MaskContext, MaskMod, Pattern, register_pattern
from ..patterns.base import check_int
from .select import bind_table, expand_kv_heads, pool_blocks, row_geometry, select_blocks


@dataclass(frozen=True)
class RoutedBlocks(Pattern):
    """Base of block-routing patterns: ``bind_dynamic`` scores key blocks per query block and head
    (:meth:`block_scores`) and keeps a fixed number of them per row (see :mod:`hf_sparse.learned.select`).

    Options:
        block_size: positions per routed block (also the kernel's tile size unless ``kernel_block_size``
            overrides it).
        k: key blocks chosen by score per query block, on top of the forced ones.
        num_local_blocks: the query block's own key block plus ``num_local_blocks - 1`` neighbours (the
            previous ones when causal, centred otherwise), always kept.
        num_global: the key blocks holding the first ``num_global`` tokens are always kept, for every query
            (e.g. ``[CLS]`` or an attention-sink token).
        global_queries: the query blocks holding those tokens also keep every key block they may see, as a
            fixed pattern's global tokens attend everything (e.g. so that ``[CLS]`` can pool a whole document
            for classification). Off by default: then every query-block row keeps the same number of blocks.
    """

    dynamic: ClassVar[bool] = True

    block_size: int = 64
    k: int = 2
    num_local_blocks: int = 1
    num_global: int = field(default=1, kw_only=True)
    global_queries: bool = field(default=False, kw_only=True)

    def _validate(self) -> None:
        check_int(self.name, "block_size", self.block_size, minimum=1)
        check_int(self.name, "k", self.k, minimum=0)
        check_int(self.name, "num_local_blocks", self.num_local_blocks, minimum=0)
        if not isinstance(self.global_queries, bool):
            raise ValueError(f"{self.name}: global_queries must be true or false, got {self.global_queries!r}")
        if self.global_queries and self.num_global == 0:
            raise ValueError(f"{self.name}: global_queries=True needs global tokens; set num_global >= 1")
        if self.k == 0 and self.num_local_blocks == 0 and self.num_global == 0:
            raise ValueError(f"{self.name}: k, num_local_blocks and num_global are all 0, so nothing is kept; "
                             "set k >= 1")

    def _mask_mod(self, ctx: MaskContext) -> MaskMod:
        raise ValueError(
            f"{self.name} chooses its blocks from the data and has no fixed mask; use it through patch_model / "
            "sparse_attention, or bind_dynamic(query, key, ctx, block_size)"
        )

    def block_scores(self, query: torch.Tensor, key: torch.Tensor, ctx: MaskContext) -> torch.Tensor:
        """``[B, Hq, n_q_blocks, n_kv_blocks]`` float: higher = more worth keeping."""
        raise NotImplementedError

    def select(self, query: torch.Tensor, key: torch.Tensor, ctx: MaskContext) -> torch.Tensor:
        """The block table ``[B, Hq, n_q_blocks, n_kv_blocks]`` (bool) this pattern keeps for one call."""
        if query.dim() != 4 or key.dim() != 4:
            raise ValueError(f"{self.name}: query/key must be [B, H, L, D], got {tuple(query.shape)}, {tuple(key.shape)}")
        with torch.no_grad():
            scores = self.block_scores(query.detach(), key.detach(), ctx)
        geometry = row_geometry(ctx, self.block_size, self.num_local_blocks, self.num_global, query.device)
        return select_blocks(scores, geometry, self.k, self.global_queries)

    def bind_dynamic(
        self, query: torch.Tensor, key: torch.Tensor, ctx: MaskContext, block_size: int
    ) -> tuple[MaskMod, BlockLayout]:
        """Select blocks from ``query [B, Hq, Lq, D]`` / ``key [B, Hkv, Lk, D]``; returns the mask function and
        the ``[B, Hq, nq, nkv]`` layout at the kernel's tile size ``block_size``."""
        return bind_table(self.select(query, key, ctx), ctx, self.block_size, block_size)


@register_pattern
@dataclass(frozen=True)
class TopKBlocks(RoutedBlocks):
    """Score = mean-pooled query of the query block · mean-pooled key of the key block, per head
    (grouped-query attention: each query head uses its key/value head's keys).

    Causal calls: the mean query of a block includes all of the block's rows, so which past blocks an early
    row sees can depend on later rows of its own block (never on the values of future keys it is not
    allowed to attend); cached decode steps (one query) route each token on its own query.
    """

    name: ClassVar[str] = "topk_blocks"

    def block_scores(self, query: torch.Tensor, key: torch.Tensor, ctx: MaskContext) -> torch.Tensor:
        q = pool_blocks(query, self.block_size)
        k = expand_kv_heads(pool_blocks(key, self.block_size), query.shape[1])
        return q @ k.transpose(-1, -2)
