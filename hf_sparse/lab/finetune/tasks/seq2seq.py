"""Seq2seq fine-tuning: translation (BLEU, chrF) and summarization (ROUGE-1/2/L).

Data rows are ``source`` / ``target`` texts (:mod:`hf_sparse.lab.data.translation`, :mod:`.summarization`);
models come from :mod:`hf_sparse.lab.finetune.seq2seq_models` (BERT2BERT from MiniLM, random or hub GPT-2,
hub T5 / BART / Marian); an encoder-decoder whose learned position table is shorter than ``data.max_length``
(MiniLM: 512) gets it extended (:func:`~.helpers.fit_positions`). Training minimizes the target tokens'
cross-entropy (decoder-only models see ``prompt + target`` and are scored on the target only); evaluation also
generates (greedy or beam search, ``generation`` section) and scores the decoded text.

Sparse settings: one pattern for every self-attention (encoder: bidirectional, decoder: causal), or one
per part, ``sparse: {encoder: {...}, decoder: {...}}``; cross-attention always stays dense.

References are the targets as the tokenizer round-trips them (``decode(encode(target))``): the offline
MiniLM vocabulary is uncased and strips accents, so the model could never produce the raw text; with a
cased, lossless tokenizer the round trip is the text itself.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, ClassVar

import datasets
import torch
from tqdm.auto import tqdm

from hf_sparse.config import SparseConfig
from hf_sparse.patch import patch_model

from ...data import build_summarization, build_translation
from ..config import ConfigError, RunConfig
from ..record import sparse_summary
from ..scores import summarization_scores, translation_scores
from ..seq2seq_models import build_seq2seq_model
from .base import Batch, EvalResult, Task
from .helpers import fit_positions, load_limited

IGNORE = -100
_MODEL_KEYS = ("input_ids", "attention_mask", "labels")


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    """``[B, max_len]`` long tensor of ``rows`` padded with ``value`` (on the left if ``left``)."""
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


class Seq2SeqTask(Task):
    """Shared behaviour of the text-to-text tasks; subclasses set ``name``, ``primary_metric``,
    ``builder`` and ``score``."""

    builder: ClassVar[Callable[..., datasets.DatasetDict]]
    score: ClassVar[Callable[[list[str], list[str]], tuple[dict[str, float], str]]]

    def __init__(self) -> None:
        self.decoder_only = False
        self.eos_token_id = 0
        self.tokenizer: Any = None
        self.num_beams, self.max_new_tokens = 1, 64

    # -- data and model -----------------------------------------------------------------------------------
    def builder_options(self, cfg: RunConfig) -> dict[str, Any]:
        return {"source_column": cfg.data.source_column, "target_column": cfg.data.target_column}

    def load_data(self, cfg: RunConfig) -> datasets.DatasetDict:
        return load_limited(functools.partial(type(self).builder, **self.builder_options(cfg)), cfg)

    def build_model(self, cfg: RunConfig, data: datasets.DatasetDict) -> tuple[torch.nn.Module, Any]:
        built = build_seq2seq_model(cfg)
        self.decoder_only, self.eos_token_id, self.tokenizer = built.decoder_only, built.eos_token_id, built.tokenizer
        self.num_beams = cfg.generation.num_beams
        self.max_new_tokens = cfg.generation.max_new_tokens or cfg.data.max_target_length
        if not built.decoder_only:  # a decoder-only model's length is checked where it is built
            fit_positions(built.model, cfg.data.max_length, built.tokenizer)
        return built.model, built.tokenizer

    def prepare(self, data: datasets.DatasetDict, processor: Any, cfg: RunConfig) -> datasets.DatasetDict:
        eos, decoder_only = self.eos_token_id, self.decoder_only

        def tokenize(rows: dict[str, list]) -> dict[str, list]:
            sources = processor(rows["source"], truncation=True, max_length=cfg.data.max_length)["input_ids"]
            if decoder_only:  # the prompt ends with the end token, then the model writes the target
                sources = [ids if ids and ids[-1] == eos else ids[: cfg.data.max_length - 1] + [eos] for ids in sources]
            full = processor(rows["target"], add_special_tokens=False)["input_ids"]
            targets = [ids[: cfg.data.max_target_length - 1] + [eos] for ids in full]
            references = processor.batch_decode(full, skip_special_tokens=True)
            return {"input_ids": sources, "target_ids": targets, "reference": references}

        return data.map(tokenize, batched=True, remove_columns=["source", "target"], desc="tokenizing")

    def collate(self, processor: Any, cfg: RunConfig) -> Callable[[list[dict]], Batch]:
        pad, decoder_only = processor.pad_token_id, self.decoder_only

        def collate(rows: list[dict]) -> Batch:
            sources = [r["input_ids"] for r in rows]
            targets = [r["target_ids"] for r in rows]
            batch: dict[str, Any] = {"references": [r["reference"] for r in rows]}
            if decoder_only:
                joined = [s + t for s, t in zip(sources, targets, strict=True)]
                batch["input_ids"] = _pad(joined, pad)
                batch["attention_mask"] = _pad([[1] * len(j) for j in joined], 0)
                batch["labels"] = _pad([[IGNORE] * len(s) + t for s, t in zip(sources, targets, strict=True)], IGNORE)
                batch["prompt_ids"] = _pad(sources, pad, left=True)  # generation continues every row at the end
                batch["prompt_mask"] = _pad([[1] * len(s) for s in sources], 0, left=True)
            else:
                batch["input_ids"] = _pad(sources, pad)
                batch["attention_mask"] = _pad([[1] * len(s) for s in sources], 0)
                batch["labels"] = _pad(targets, IGNORE)
            return batch

        return collate

    def model_inputs(self, batch: Batch) -> Batch:
        return {k: batch[k] for k in _MODEL_KEYS}

    def lengths(self, split: datasets.Dataset) -> list[int]:
        sources = [len(ids) for ids in split["input_ids"]]
        if not self.decoder_only:
            return sources
        return [s + len(t) for s, t in zip(sources, split["target_ids"], strict=True)]

    def target_lengths(self, split: datasets.Dataset) -> list[int]:
        """Decoder self-attention lengths: the target plus the decoder's start token."""
        return [len(t) + 1 for t in split["target_ids"]]

    def sample_tokens(self, batch: Batch) -> torch.Tensor:
        tokens = batch["attention_mask"].sum(-1)
        return tokens if self.decoder_only else tokens + (batch["labels"] != IGNORE).sum(-1)

    def data_record(self) -> dict[str, Any]:
        return {"references": "targets round-tripped through the tokenizer (decode(encode(target)))",
                "decoder_only": self.decoder_only}

    # -- sparsity -----------------------------------------------------------------------------------------
    def check_sparse_parts(self, parts: dict[str, SparseConfig]) -> None:
        """Every shape is accepted here; a decoder-only model refuses an encoder part in :meth:`apply_sparse`."""

    def apply_sparse(self, model: torch.nn.Module, parts: dict[str, SparseConfig]) -> None:
        if "all" in parts:
            patch_model(model, parts["all"])
            return
        if self.decoder_only and "encoder" in parts:
            raise ConfigError("sparse.encoder: this model is decoder-only (prompt and target in one causal sequence); "
                              "use sparse.decoder or a single sparse.pattern")
        encoder = set() if self.decoder_only else {id(m) for m in model.get_encoder().modules()}
        for part, config in parts.items():
            inside = part == "encoder"
            patch_model(model, config, filter_fn=lambda name, module, inside=inside: (id(module) in encoder) == inside)

    def sparse_summary(
        self, model: torch.nn.Module, parts: dict[str, SparseConfig], split: datasets.Dataset
    ) -> dict[str, Any]:
        """Classification's ``sparse`` block for the encoder (bidirectional, over source lengths), or for
        decoder-only models the causal prompt + target sequence, plus ``parts`` with each part's pattern and
        densities (the decoder's causal, relative to dense causal attention, over target lengths)."""
        configs = {"encoder": parts.get("encoder", parts.get("all")), "decoder": parts.get("decoder", parts.get("all"))}
        summaries = {"decoder": sparse_summary(model, configs["decoder"], self, self.target_lengths(split), causal=True)}
        if self.decoder_only:
            configs.pop("encoder")
            summaries["decoder"] = sparse_summary(model, configs["decoder"], self, self.lengths(split), causal=True)
        else:
            summaries["encoder"] = sparse_summary(model, configs["encoder"], self, self.lengths(split))
        top = dict(summaries["encoder" if "encoder" in summaries else "decoder"])
        if parts and "all" not in parts and len(summaries) > 1:
            top["pattern"] = "; ".join(f"{part} {summaries[part]['pattern']}" for part in ("encoder", "decoder"))
            top["config"] = {part: summaries[part]["config"] for part in ("encoder", "decoder")}
        keep = ("pattern", "token_density", "block_density", "eval_length", "density_source")
        top["parts"] = {part: {k: s.get(k) for k in keep} for part, s in summaries.items()}
        return top

    # -- evaluation ---------------------------------------------------------------------------------------
    def _loss_and_generate(
        self, model: torch.nn.Module, generator: torch.nn.Module, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One evaluation batch: the target loss, the ``[B, T]`` generated token ids (prompt / start token
        removed) and the seconds generation took. An encoder-decoder encodes each source once: the encoder's
        output feeds both the loss forward and ``generate``, and generation's seconds include that encoder pass
        (what a user's ``generate`` call costs). ``model`` may be wrapped (DDP); ``generator`` is the same model
        unwrapped."""
        options = {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens, "do_sample": False}
        if self.decoder_only:
            loss = model(**self.model_inputs(batch)).loss
            prompt, tick = batch["prompt_ids"], time.perf_counter()
            out = generator.generate(input_ids=prompt, attention_mask=batch["prompt_mask"], **options)
            return loss, out[:, prompt.shape[1]:], time.perf_counter() - tick
        tick = time.perf_counter()
        encoded = generator.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          return_dict=True)
        seconds = time.perf_counter() - tick
        # the loss first: beam search expands `encoded` in place to num_beams rows per source
        loss = model(encoder_outputs=encoded, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        tick = time.perf_counter()
        out = generator.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 encoder_outputs=encoded, **options)
        return loss, out[:, 1:], seconds + time.perf_counter() - tick

    def _until_eos(self, ids: torch.Tensor) -> list[list[int]]:
        rows = []
        for row in ids.tolist():
            end = row.index(self.eos_token_id) + 1 if self.eos_token_id in row else len(row)
            rows.append(row[:end])
        return rows

    def evaluate(self, model: torch.nn.Module, loader: Any, accelerator: Any, desc: str) -> EvalResult:
        model.eval()
        generator = accelerator.unwrap_model(model)
        loss_sum, label_count, tokens, generated, gen_s = 0.0, 0, 0, 0, 0.0
        predictions, references = [], []
        with torch.no_grad():
            for batch in tqdm(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
                loss, ids, seconds = self._loss_and_generate(model, generator, batch)
                labels = int((batch["labels"] != IGNORE).sum())
                rows, gen_s = self._until_eos(ids), gen_s + seconds
                texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
                stats = torch.tensor([float(loss) * labels, labels, int(self.sample_tokens(batch).sum()),
                                      sum(len(r) for r in rows)], dtype=torch.float64, device=accelerator.device)
                stats = accelerator.reduce(stats, reduction="sum")
                loss_sum, label_count = loss_sum + float(stats[0]), label_count + int(stats[1])
                tokens, generated = tokens + int(stats[2]), generated + int(stats[3])
                pairs = accelerator.gather_for_metrics(list(zip(texts, batch["references"], strict=True)),
                                                       use_gather_object=True)
                predictions += [p for p, _ in pairs]
                references += [r for _, r in pairs]
        scores, library = type(self).score([p.strip() for p in predictions], references)
        metrics = {"loss": loss_sum / max(1, label_count), **scores}
        return EvalResult(metrics, samples=len(predictions), tokens=tokens, generated_tokens=generated,
                          metric_library=library, generation_s=gen_s)


class TranslationTask(Seq2SeqTask):
    """Columns ``source`` / ``target`` (:func:`hf_sparse.lab.data.build_translation`); BLEU and chrF."""

    name = "translation"
    primary_metric = "bleu"
    builder = staticmethod(build_translation)
    score = staticmethod(translation_scores)

    def builder_options(self, cfg: RunConfig) -> dict[str, Any]:
        return {**super().builder_options(cfg), "language_pair": cfg.data.language_pair}


class SummarizationTask(Seq2SeqTask):
    """Columns ``source`` / ``target`` (:func:`hf_sparse.lab.data.build_summarization`); ROUGE-1/2/L."""

    name = "summarization"
    primary_metric = "rougeL"
    builder = staticmethod(build_summarization)
    score = staticmethod(summarization_scores)
