"""Models for the seq2seq tasks: ``model.name_or_path`` ->
``(model, tokenizer, kind)`` with ``kind`` ``"encoder-decoder"`` or ``"decoder-only"``.

* ``"minilm2minilm"``: an ``EncoderDecoderModel`` whose encoder and decoder both start from the offline
  MiniLM BERT weights (the decoder gets causal self-attention, new cross-attention and LM head);
  ``model.config`` keys are applied to both halves (e.g. ``{num_hidden_layers: 3}`` keeps the first 3 layers).
* ``"gpt2-random"``: a random-init GPT-2 (``GPT2Config`` sized by :data:`GPT2_DEFAULTS` and ``model.config``)
  with the offline MiniLM WordPiece tokenizer (no GPT-2 tokenizer is available offline); prompt -> target.
* any other hub id / local folder: ``AutoModelForSeq2SeqLM`` (T5, BART, Marian, ...) when its config is an
  encoder-decoder, else ``AutoModelForCausalLM`` (``gpt2``, ...) used decoder-only. A saved
  ``EncoderDecoderModel`` (a ``minilm2minilm`` run's ``model/`` folder) takes ``model.config`` keys on both
  halves, as ``minilm2minilm`` does (e.g. ``{attention_probs_dropout_prob: 0}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from ..data.common import notify
from ..models import random_config, random_model
from .config import RunConfig
from .models import apply_config_overrides, minilm_path, resolve_pretrained
from .tasks.helpers import from_pretrained

MINILM2MINILM = "minilm2minilm"
RANDOM_GPT2 = "gpt2-random"
#: Default random-init GPT-2 (overridden by ``model.config``): small enough to train on a CPU.
GPT2_DEFAULTS = {"n_embd": 128, "n_layer": 2, "n_head": 4, "n_inner": 256}


@dataclass
class Seq2SeqModel:
    """A model ready for seq2seq fine-tuning.

    Attributes:
        model: the Transformers model (``pad`` / ``eos`` / decoder-start ids set on config and generation config).
        tokenizer: its tokenizer (right padding; decoder-only prompts are left-padded by the task).
        decoder_only: whether source and target share one causal sequence (prompt -> target).
        eos_token_id: the token that ends a target (BERT's ``[SEP]``, else the tokenizer's EOS).
    """

    model: torch.nn.Module
    tokenizer: Any
    decoder_only: bool
    eos_token_id: int


def build_seq2seq_model(cfg: RunConfig) -> Seq2SeqModel:
    """The model and tokenizer of ``cfg.model`` (see the module docstring)."""
    name = cfg.model.name_or_path
    if name == MINILM2MINILM:
        return _minilm2minilm(cfg)
    if name == RANDOM_GPT2:
        return _random_gpt2(cfg)
    path = resolve_pretrained(name)
    config = from_pretrained(AutoConfig, path)
    if isinstance(config, transformers.EncoderDecoderConfig):
        for half in ("encoder", "decoder"):
            apply_config_overrides(getattr(config, half), cfg.model.config)
    else:
        apply_config_overrides(config, cfg.model.config)
    tokenizer = from_pretrained(AutoTokenizer, path)
    decoder_only = not getattr(config, "is_encoder_decoder", False)
    loader = AutoModelForCausalLM if decoder_only else AutoModelForSeq2SeqLM
    model = from_pretrained(loader, path, config=config)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if tokenizer.pad_token_id is None:  # GPT-2 has no pad token: pad with EOS (masked out everywhere)
        tokenizer.pad_token = tokenizer.eos_token
    start = getattr(model.config, "decoder_start_token_id", None)
    _set_special_ids(model, pad=tokenizer.pad_token_id, eos=eos, start=start)
    return Seq2SeqModel(model, tokenizer, decoder_only, eos)


def _set_special_ids(model: torch.nn.Module, *, pad: int, eos: int, start: int | None) -> None:
    for config in (model.config, model.generation_config):
        config.pad_token_id, config.eos_token_id = pad, eos
        if start is not None:
            config.decoder_start_token_id = start


def _minilm2minilm(cfg: RunConfig) -> Seq2SeqModel:
    path = minilm_path()
    overrides = {f"{half}_{key}": value for key, value in cfg.model.config.items() for half in ("encoder", "decoder")}
    bert = transformers.BertConfig.from_pretrained(path)
    unknown = [key for key in cfg.model.config if not hasattr(bert, key)]
    if unknown:
        raise ValueError(f"model.config.{unknown[0]}: BertConfig has no attribute {unknown[0]!r}")
    transformers.logging.set_verbosity_error()  # the decoder's new cross-attention / LM head weights are expected
    try:
        model = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(path, path, **overrides)
    finally:
        transformers.logging.set_verbosity_warning()
    notify("minilm2minilm: encoder and decoder from MiniLM; cross-attention and the LM head start untrained")
    share_sub_configs(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    _set_special_ids(model, pad=tokenizer.pad_token_id, eos=tokenizer.sep_token_id, start=tokenizer.cls_token_id)
    model.config.vocab_size = model.config.decoder.vocab_size
    return Seq2SeqModel(model, tokenizer, False, tokenizer.sep_token_id)


def share_sub_configs(model: torch.nn.Module) -> None:
    """Make every module of an ``EncoderDecoderModel``'s encoder / decoder use that half's config object.

    Transformers 5.x builds the halves with their own config objects and then replaces only the halves'
    top-level ``config`` with the shared ``EncoderDecoderConfig.encoder`` / ``.decoder``; the attention
    modules keep the stale copies, so ``set_attn_implementation`` never reaches them (the encoder's
    attention would silently stay SDPA when patched)."""
    for half in (model.encoder, model.decoder):
        shared = half.config
        for module in half.modules():
            current = getattr(module, "config", None)
            if isinstance(current, transformers.PretrainedConfig) and current is not shared:
                if current.model_type != shared.model_type:
                    continue
                module.config = shared


def _random_gpt2(cfg: RunConfig) -> Seq2SeqModel:
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    positions = cfg.data.max_length + cfg.data.max_target_length
    config = random_config(
        "gpt2", cfg.model.config, vocab_size=len(tokenizer), n_positions=positions, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id, **GPT2_DEFAULTS,
    )
    if config.n_positions < positions:
        raise ValueError(f"model.config.n_positions {config.n_positions} < data.max_length + data.max_target_length "
                         f"= {positions}; raise it or shorten the data")
    model = random_model("gpt2", "lm", config)
    _set_special_ids(model, pad=tokenizer.pad_token_id, eos=tokenizer.sep_token_id, start=None)
    return Seq2SeqModel(model, tokenizer, True, tokenizer.sep_token_id)
