"""One way to drop every cache of masks and plans: :func:`clear_caches`."""

from __future__ import annotations

from .. import patterns
from .blocksparse import clear_layer_memo
from .flex import clear_block_mask_cache
from .plan import clear_plan_cache


def clear_caches() -> None:
    """Drop every cached mask, layout, bound mask function (:mod:`hf_sparse.patterns`), block-sparse plan, the
    block-sparse group masks of the last model mask and FlexAttention ``BlockMask``, e.g. to free memory or to
    measure a cold first call. Kernels rebuild them on their next call."""
    patterns.clear_caches()
    clear_plan_cache()
    clear_layer_memo()
    clear_block_mask_cache()
