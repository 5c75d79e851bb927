"""Content-chosen sparsity: patterns that select key blocks from the data (``topk_blocks``) or with small
trained per-layer modules (``learned_gate``). Both are data-dependent patterns (``dynamic = True``): every
kernel binds them once per call through ``bind_dynamic`` and runs them like any other pattern."""

from .gate import BlockGate, LearnedGate, gate_scope, gates, head_shape
from .select import bind_table, pool_blocks, row_geometry, select_blocks
from .topk import RoutedBlocks, TopKBlocks
from .weights import restore_added_weights

__all__ = [
    "BlockGate", "LearnedGate", "RoutedBlocks", "TopKBlocks", "bind_table", "gate_scope", "gates", "head_shape",
    "pool_blocks", "restore_added_weights", "row_geometry", "select_blocks",
]
