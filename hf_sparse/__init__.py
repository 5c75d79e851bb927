"""hf_sparse: sparse attention for Hugging Face Transformers models.

    import hf_sparse
    model = hf_sparse.patch_model(model, "sliding_window", window=128, num_global=1)
    ...
    hf_sparse.unpatch_model(model)

Importing the package registers the ``hf_sparse`` attention and mask functions with Transformers.
"""

from . import integration as _integration  # noqa: F401  (registers the attention + mask functions)
from .config import SparseConfig
from .integration import IMPLEMENTATION_NAME, ModuleSparseState, get_state
from .kernels import backend_names, sparse_attention
from .learned import LearnedGate, TopKBlocks, gate_scope  # registers topk_blocks and learned_gate
from .patch import (
    apply_saved_patch,
    iter_states,
    last_backends,
    load_patched,
    patch_model,
    patched_modules,
    unpatch_model,
)
from .patterns import (
    BigBird,
    BlockLocal,
    Dense,
    Dilated,
    Local2D,
    Longformer,
    MaskContext,
    Pattern,
    RandomBlocks,
    SlidingWindow,
    Strided,
    allowed_matrix,
    block_layout,
    density,
    make_pattern,
    pattern_names,
    register_pattern,
)
from .positions import extend_positions

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION_NAME", "BigBird", "BlockLocal", "Dense", "Dilated", "LearnedGate", "Local2D", "Longformer",
    "MaskContext",
    "ModuleSparseState", "Pattern", "RandomBlocks", "SlidingWindow", "SparseConfig", "Strided",
    "TopKBlocks", "allowed_matrix", "apply_saved_patch", "backend_names", "block_layout", "density",
    "extend_positions", "gate_scope", "get_state",
    "iter_states", "last_backends", "load_patched", "make_pattern", "patch_model", "patched_modules",
    "pattern_names", "register_pattern", "sparse_attention", "unpatch_model",
]
