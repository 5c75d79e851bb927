"""Finding the attention modules of a Transformers model, and the facts about it patterns need."""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

# Models known to keep their own attention code outside the registry (anchors, not targets).
_KNOWN_UNSUPPORTED = ("longformer", "led", "big_bird", "bigbird_pegasus", "reformer")
_CROSS_NAME = re.compile(r"cross|encdec|encoder_attn", re.IGNORECASE)
SUPPORTED_EXAMPLES = "bert, roberta, distilbert, gpt2, vit, deit, t5, bart, marian, llama"


@dataclass(frozen=True)
class AttentionSite:
    """One attention module that dispatches through Transformers' ``AttentionInterface``.

    Attributes:
        name: qualified module name in the model (``model.named_modules()``).
        module: the module itself (the one passed as ``module`` to the attention function).
        cross: whether it attends another sequence (encoder-decoder cross-attention).
        layer: the layer index, from ``module.layer_idx`` or the last number in ``name``.
    """

    name: str
    module: torch.nn.Module
    cross: bool
    layer: int | None


@functools.cache
def _dispatches_through_registry(cls: type) -> bool:
    """Whether the attention class's ``forward`` looks its function up in ``ALL_ATTENTION_FUNCTIONS``."""
    # Transformers 5.x exposes no public flag for this, per module or per class: its own check
    # (``PreTrainedModel._can_set_attn_implementation``) is private, per model class, and reads the source too.
    # So the class's source is inspected, here only.
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source


def _layer_index(name: str, module: torch.nn.Module) -> int | None:
    idx = getattr(module, "layer_idx", None)
    if isinstance(idx, int) and not isinstance(idx, bool):
        return idx
    numbers = re.findall(r"\.(\d+)(?:\.|$)", name)
    return int(numbers[-1]) if numbers else None


def _is_cross(name: str, module: torch.nn.Module) -> bool:
    if getattr(module, "is_cross_attention", False):
        return True
    last = name.rsplit(".", 1)[-1]
    return bool(_CROSS_NAME.search(last) or _CROSS_NAME.search(type(module).__name__))


def attention_sites(model: torch.nn.Module) -> list[AttentionSite]:
    """Every registry-dispatching attention module of ``model``, self- and cross-attention."""
    sites = []
    for name, module in model.named_modules():
        if hasattr(module, "is_causal") and _dispatches_through_registry(type(module)):
            sites.append(AttentionSite(name, module, _is_cross(name, module), _layer_index(name, module)))
    return sites


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Transformers model inside a wrapper, ``model`` itself for anything else.

    A wrapper is a module that is not a Transformers model and has ``get_base_model()`` (PEFT's ``PeftModel``,
    whose module names carry a ``base_model.model.`` prefix). Names of patched modules are relative to the
    model found here, so settings saved from a wrapped model match the model ``merge_and_unload()`` returns.
    """
    seen: set[int] = set()
    while id(model) not in seen and not isinstance(model, PreTrainedModel):
        seen.add(id(model))
        getter = getattr(type(model), "get_base_model", None)
        inner = model.get_base_model() if callable(getter) else None
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model


def model_type(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def check_supported(model: torch.nn.Module) -> list[AttentionSite]:
    """The model's attention sites; ``ValueError`` naming the model if it cannot be patched."""
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "set_attn_implementation"):
        raise ValueError(
            f"patch_model expects a Transformers PreTrainedModel, got {type(model).__name__}; "
            f"supported are models whose attention uses the AttentionInterface ({SUPPORTED_EXAMPLES}, ...)"
        )
    sites = attention_sites(model)
    if not any(not s.cross for s in sites):
        mtype = model_type(model)
        hint = " (it keeps its own sparse attention code)" if mtype in _KNOWN_UNSUPPORTED else ""
        raise ValueError(
            f"hf_sparse cannot patch model type {mtype!r} ({type(model).__name__}){hint}: its attention does not "
            f"dispatch through Transformers' AttentionInterface. Supported are models that do, e.g. {SUPPORTED_EXAMPLES}"
        )
    return sites


def image_layout(model: torch.nn.Module) -> tuple[tuple[int, int], int] | None:
    """``((rows, cols), num_prefix)`` of an image model's patch grid, or ``None`` for other models.

    The grid comes from ``image_size // patch_size`` in the model's (or its vision sub-)config; the prefix
    count from the embedding's ``cls_token`` / ``distillation_token`` / ``register_tokens`` parameters.
    """
    config = getattr(model, "config", None)
    candidates = [config, getattr(config, "vision_config", None), getattr(config, "encoder", None)]
    for cfg in candidates:
        image_size, patch_size = getattr(cfg, "image_size", None), getattr(cfg, "patch_size", None)
        if image_size is None or patch_size is None:
            continue
        rows, cols = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        p_rows, p_cols = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        return (rows // p_rows, cols // p_cols), _prefix_tokens(model)
    return None


def _prefix_tokens(model: torch.nn.Module) -> int:
    for module in model.modules():
        cls_token = getattr(module, "cls_token", None)
        if isinstance(cls_token, torch.Tensor):
            count = 0
            for attr in ("cls_token", "distillation_token", "register_tokens"):
                token = getattr(module, attr, None)
                if isinstance(token, torch.Tensor) and token.dim() == 3:
                    count += token.shape[1]
            return count
    return 1
