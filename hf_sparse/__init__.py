"""hf_sparse: sparse attention for Hugging Face Transformers models.

    import hf_sparse
    model = hf_sparse.patch_model(model, "sliding_window", window=128, num_global=1)
    ...
    hf_sparse.unpatch_model(model)

Importing the package registers the ``hf_sparse`` attention and mask functions with Transformers.
"""

from . import integration as _integration  # noqa: F401  (registers the attention + mask functions)
from . import learned as _learned  # noqa: F401  (registers topk_blocks and learned_gate)
from ._version import __version__ as __version__
from .config import SparseConfig
from .kernels import sparse_attention
from .overview import summary
from .patch import (
    apply_saved_patch,
    last_backends,
    load_patched,
    patch_model,
    patched_modules,
    unpatch_model,
)
from .patterns import MaskContext, Pattern, make_pattern, pattern_names, register_pattern
from .positions import extend_positions

# The user-facing API. Pattern classes live in hf_sparse.patterns, kernels in hf_sparse.kernels, module
# states in hf_sparse.integration.
__all__ = [
    "MaskContext", "Pattern", "SparseConfig", "apply_saved_patch", "extend_positions",
    "last_backends", "load_patched", "make_pattern", "patch_model", "patched_modules", "pattern_names",
    "register_pattern", "sparse_attention", "summary", "unpatch_model",
]
