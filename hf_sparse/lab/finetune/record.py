"""What goes into metrics.json besides the task metrics: sparsity actually applied, versions, hardware,
peak memory; and writing the file (a complete record, or ``status: failed`` with a one-line error)."""

from __future__ import annotations

import json
import os
import platform
import resource
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import torch

from hf_sparse import __version__
from hf_sparse.bench.profiling import cpu_description
from hf_sparse.config import SparseConfig
from hf_sparse.kernels.call import kernel_block_size
from hf_sparse.patch import iter_states, last_backends
from hf_sparse.patterns import Dense, MaskContext, block_layout, density


class HasMaskContext(Protocol):
    """What :func:`sparse_summary` needs of a task (a :class:`~hf_sparse.lab.finetune.tasks.Task` is one)."""

    def mask_context(self, model: torch.nn.Module, length: int, causal: bool = False) -> MaskContext: ...


def sparse_summary(
    model: torch.nn.Module, config: SparseConfig | None, task: HasMaskContext, lengths: list[int], *, causal: bool = False
) -> dict[str, Any]:
    """The ``sparse`` block of metrics.json.

    ``lengths`` are the input lengths of the evaluated examples. ``eval_length`` is their rounded mean;
    ``token_density`` is the fraction of real (query, key) pairs the pattern keeps, over those examples
    (each example weighs by its ``length**2`` pairs); ``block_density`` is the fraction of
    ``block_size``-tiles a block-sparse kernel would visit at ``eval_length`` (``block_size``: the tile edge the
    kernel uses at that length, :func:`~hf_sparse.kernels.call.kernel_block_size`); ``backends`` the kernel each
    patched module used in its latest call. ``causal``: the attention is causal (a decoder's), and both
    densities are relative to what dense causal attention keeps (the pairs / tiles at or below the diagonal).
    """
    eval_length = max(1, round(sum(lengths) / len(lengths))) if lengths else 0
    implementation = getattr(model.config, "_attn_implementation", None)
    if config is None:
        return {"pattern": "dense", "config": None, "token_density": 1.0, "block_density": 1.0,
                "block_size": None, "eval_length": eval_length, "backends": {}, "attn_implementation": implementation}
    block_size = kernel_block_size(config.kernel_block_size, config.pattern, eval_length, eval_length)
    common = {"pattern": config.pattern.describe(), "config": config.to_dict(), "block_size": block_size,
              "eval_length": eval_length, "backends": last_backends(model), "attn_implementation": implementation}
    if config.pattern.dynamic:
        # The blocks are chosen from the data: report what the modules kept in their latest (test) call.
        kept_blocks = [s.last_block_density for _, s in iter_states(model) if s.last_block_density is not None]
        measured = round(sum(kept_blocks) / len(kept_blocks), 4) if kept_blocks else None
        return {**common, "token_density": measured, "block_density": measured,
                "density_source": "measured: key blocks kept in the last test batch, mean over layers and heads"}
    kept = pairs = 0.0
    for length, count in Counter(lengths).items():
        ctx = task.mask_context(model, length, causal=causal)
        kept += count * length * length * density(config.pattern, ctx)
        pairs += count * length * length * (density(Dense(), ctx) if causal else 1.0)
    ctx = task.mask_context(model, eval_length, causal=causal)
    tiles = block_layout(config.pattern, ctx, block_size).block_density
    if causal:
        tiles /= block_layout(Dense(), ctx, block_size).block_density
    source = "pattern at the test lengths" + (", relative to dense causal attention" if causal else "")
    return {**common, "token_density": round(kept / pairs, 4) if pairs else None,
            "block_density": round(tiles, 4), "density_source": source}


def versions() -> dict[str, str]:
    import accelerate
    import datasets
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "datasets": datasets.__version__, "hf_sparse": __version__}


def hardware(device: torch.device, processes: int, mixed_precision: str) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()["cpu_model"]
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads(), "processes": processes,
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "mixed_precision": mixed_precision}


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """``(megabytes, what was measured)``: CUDA peak allocated on GPU, else this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss (process peak RSS)"


def write_json(path: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as indented JSON (atomically: a temp file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def write_failed(run_dir: Path, run_name: str, error: BaseException | str) -> Path:
    """metrics.json of a failed run: ``{"run_name", "status": "failed", "error": <one line>}``."""
    message = " ".join(str(error).split()) or type(error).__name__
    return write_json(run_dir / "metrics.json", {"run_name": run_name, "status": "failed", "error": message})
