"""Sparse-attention patterns. Each is defined once, as a mask function plus options; the reference kernel,
the block-sparse kernel, FlexAttention and the pictures all read the same definition."""

from . import image, local, random, strided  # noqa: F401  (registers the built-in patterns)
from .base import BlockLayout, Intersection, MaskContext, MaskMod, Pattern, Union
from .image import Local2D
from .local import BlockLocal, Dense, Longformer, SlidingWindow
from .materialize import allowed_matrix, block_layout, bound_mask_mod, clear_caches, density
from .random import BigBird, RandomBlocks
from .registry import (
    PATTERNS,
    RESERVED_OPTION_NAMES,
    as_pattern,
    make_pattern,
    option_names,
    pattern_from_dict,
    pattern_names,
    register_pattern,
)
from .strided import Dilated, Strided

__all__ = [
    "PATTERNS", "RESERVED_OPTION_NAMES", "BigBird", "BlockLayout", "BlockLocal", "Dense", "Dilated",
    "Intersection", "Local2D",
    "Longformer", "MaskContext", "MaskMod", "Pattern", "RandomBlocks", "SlidingWindow", "Strided", "Union",
    "allowed_matrix", "as_pattern", "block_layout", "bound_mask_mod", "clear_caches", "density",
    "make_pattern", "option_names", "pattern_from_dict", "pattern_names", "register_pattern",
]
