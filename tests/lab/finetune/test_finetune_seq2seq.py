"""Seq2seq fine-tuning end to end on tiny slices: BERT2BERT (MiniLM, 1 layer) translation under
`accelerate launch` with per-part sparse settings, random GPT-2 summarization in process; cross-attention
stays dense; encoder / decoder parts patch what they name; bad settings fail with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_sparse.lab.data import data_dir
from hf_sparse.lab.finetune import ConfigError, RunConfig, get_task, run
from hf_sparse.patch import last_backends, patched_modules

ROOT = Path(__file__).resolve().parents[3]
TINY = ["--data.max_train_samples", "8", "--data.max_eval_samples", "4", "--data.max_test_samples", "6",
        "--train.batch_size", "4", "--train.eval_batch_size", "3", "--train.epochs", "1", "--train.num_threads", "1",
        "--generation.max_new_tokens", "5", "--data.max_target_length", "8"]
BERT_TINY = ["--model.config", "{num_hidden_layers: 1}"]
GPT2_TINY = ["--model.name_or_path", "gpt2-random", "--model.config", "{n_embd: 32, n_layer: 2, n_head: 2, n_inner: 64}"]


def _need(cache: str) -> None:
    if not (data_dir() / cache / "dataset_dict.json").exists():
        pytest.skip(f"{cache} is not built under {data_dir()}: run `hf-sparse prepare-data` (needs a Debian mirror)")


def _check_seq2seq(m: dict, task: str, metric: str, library: str) -> None:
    assert (m["status"], m["task"], m["primary_metric"]) == ("ok", task, metric)
    assert metric in m["test"] and m["test"]["loss"] > 0 and m["metric_library"] == library
    speed = m["speed"]
    assert speed["generation_tokens_per_s"] > 0 and speed["train_samples_per_s"] > 0 and speed["eval_tokens_per_s"] > 0
    assert {"pattern", "config", "token_density", "block_density", "eval_length", "backends", "parts"} <= set(m["sparse"])
    assert m["data"]["references"].startswith("targets round-tripped")


@pytest.mark.slow
def test_translation_bert2bert_per_part_under_accelerate(tmp_path):
    _need("translation_debian_en_de")
    per_part = ["--sparse", "null", "--sparse.encoder.pattern", "sliding_window", "--sparse.encoder.options.window", "1",
                "--sparse.decoder.pattern", "sliding_window", "--sparse.decoder.options.window", "2",
                "--generation.num_beams", "2"]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs/accelerate/cpu_single.yaml"), "-m", "hf_sparse.lab.finetune",
               "--config", str(ROOT / "configs/translation/dense.yaml"), *TINY, *BERT_TINY, *per_part,
               "--output_dir", str(tmp_path), "--run_name", "b2b"]
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_SPARSE_DATA": str(data_dir())}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    m = json.loads((tmp_path / "b2b" / "metrics.json").read_text())
    _check_seq2seq(m, "translation", "bleu", "sacrebleu")
    assert 0 <= m["test"]["bleu"] <= 100 and 0 <= m["test"]["chrf"] <= 100 and m["data"]["test"] == 6
    sparse = m["sparse"]
    assert sparse["pattern"] == "encoder sliding_window(window=1); decoder sliding_window(window=2)"
    assert set(sparse["config"]) == {"encoder", "decoder"} and sparse["config"]["decoder"]["pattern"]["window"] == 2
    enc, dec = sparse["parts"]["encoder"], sparse["parts"]["decoder"]
    assert sparse["token_density"] == enc["token_density"] and 0 < enc["token_density"] < 0.6
    assert 0 < dec["token_density"] < 1 and "causal" in dec["density_source"]
    names = set(sparse["backends"])  # one encoder and one decoder self-attention layer, no cross-attention
    assert names == {"encoder.encoder.layer.0.attention.self", "decoder.bert.encoder.layer.0.attention.self"}
    assert "b2b: test loss" in result.stdout and "bleu" in result.stdout


@pytest.mark.slow
def test_summarization_gpt2_in_process(tmp_path):
    _need("summarization_debian_descriptions")
    cfg = RunConfig.load(ROOT / "configs/summarization/sliding_window.yaml",
                         [*TINY, *GPT2_TINY, "--data.max_length", "48", "--output_dir", str(tmp_path)])
    m = run(cfg)
    _check_seq2seq(m, "summarization", "rougeL", "rouge-score")
    assert all(0 <= m["test"][k] <= 1 for k in ("rouge1", "rouge2", "rougeL"))
    assert m["model"]["model_type"] == "gpt2" and m["data"]["decoder_only"] is True
    sparse = m["sparse"]
    assert list(sparse["parts"]) == ["decoder"] and sparse["pattern"] == "sliding_window(num_global=1, window=4)"
    assert 0 < sparse["token_density"] < 1 and sparse["eval_length"] > 20  # prompt + target, causal
    assert len(sparse["backends"]) == 2 and all(b is not None for b in sparse["backends"].values())
    assert (tmp_path / cfg.run_name / "metrics.json").exists()


@pytest.mark.slow
def test_summarization_bert2bert_reads_long_man_pages_sparse(tmp_path):
    """Man pages past MiniLM's 512 positions: the BERT2BERT's position tables are extended to data.max_length and
    the encoder's sliding window runs on a sparse kernel at that length (the decoder and cross-attention dense)."""
    from hf_sparse.lab.data.manpages import VERSION

    _need(f"summarization_manpages_v{VERSION}")
    encoder_only = ["--sparse", "null", "--sparse.encoder.pattern", "sliding_window",
                    "--sparse.encoder.options", "{window: 32, num_global: 1}"]
    cfg = RunConfig.load(ROOT / "configs/summarization/dense.yaml",
                         [*TINY, *BERT_TINY, "--data.source", "offline:manpages", "--data.max_length", "1100",
                          "--train.batch_size", "2", "--train.eval_batch_size", "2", *encoder_only,
                          "--output_dir", str(tmp_path)])
    m = run(cfg)
    _check_seq2seq(m, "summarization", "rougeL", "rouge-score")
    sparse = m["sparse"]
    parts = sparse["parts"]
    assert parts["decoder"]["pattern"] == "dense" and parts["encoder"]["pattern"].startswith("sliding_window")
    assert parts["encoder"]["eval_length"] > 512 and 0 < parts["encoder"]["token_density"] < 0.2
    assert set(sparse["backends"].values()) == {"blocksparse"}, sparse["backends"]  # (512 positions: an IndexError)


@pytest.fixture(scope="module")
def bert2bert():
    from hf_sparse.lab.finetune.seq2seq_models import build_seq2seq_model

    cfg = RunConfig.load(ROOT / "configs/translation/dense.yaml", BERT_TINY)
    built = build_seq2seq_model(cfg)
    return built, cfg


def _forward(built):
    tok = built.tokenizer
    enc = tok(["a fast tool to convert files between many formats", "short"], return_tensors="pt", padding=True)
    labels = tok(["ein schnelles Werkzeug", "kurz"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        return built.model(**enc, labels=labels).logits


def test_parts_patch_their_self_attention_and_cross_attention_stays_dense(bert2bert):
    from hf_sparse import unpatch_model

    built, _ = bert2bert
    task = get_task("translation")
    task.decoder_only = False
    dense = _forward(built)
    cfg = RunConfig.load(ROOT / "configs/translation/dense.yaml",
                         ["--sparse.encoder.pattern", "sliding_window", "--sparse.encoder.options.window", "1"])
    task.apply_sparse(built.model, cfg.sparse_parts())
    try:
        assert list(patched_modules(built.model)) == ["encoder.encoder.layer.0.attention.self"]
        sparse = _forward(built)
        assert last_backends(built.model)["encoder.encoder.layer.0.attention.self"] is not None  # really ran sparse
        assert not torch.allclose(dense, sparse, atol=1e-4)
        unpatch_model(built.model)
        cfg = RunConfig.load(ROOT / "configs/translation/sliding_window.yaml", [])
        task.apply_sparse(built.model, cfg.sparse_parts())
        names = list(patched_modules(built.model))
        assert names == ["encoder.encoder.layer.0.attention.self", "decoder.bert.encoder.layer.0.attention.self"]
        assert not any("crossattention" in n for n in names)
    finally:
        unpatch_model(built.model)
    assert torch.equal(_forward(built), dense)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_evaluation_encodes_each_source_once_with_the_two_pass_results(bert2bert, num_beams):
    """An evaluation batch runs the encoder once, feeding both the loss and ``generate``: the loss equals a full
    forward's (atol 1e-6) and the ids equal a plain ``generate`` call's, greedy and beam search alike."""
    built, _ = bert2bert
    model, tok = built.model.eval(), built.tokenizer
    task = get_task("translation")
    task.decoder_only, task.eos_token_id, task.num_beams, task.max_new_tokens = False, built.eos_token_id, num_beams, 6
    enc = tok(["a fast tool to convert files between many formats", "short"], return_tensors="pt", padding=True)
    labels = tok(["ein schnelles Werkzeug", "kurz"], return_tensors="pt", padding=True).input_ids
    labels[labels == tok.pad_token_id] = -100
    batch = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}
    calls = []
    hook = model.get_encoder().register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            loss, ids, seconds = task._loss_and_generate(model, model, batch)
    finally:
        hook.remove()
    assert len(calls) == 1 and seconds > 0
    with torch.no_grad():
        full = model(**batch).loss
        plain = model.generate(input_ids=enc.input_ids, attention_mask=enc.attention_mask, num_beams=num_beams,
                               max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(loss, full, atol=1e-6, rtol=0)
    assert torch.equal(ids, plain[:, 1:])


def test_a_saved_bert2bert_reloads_and_its_encoder_patches(bert2bert, tmp_path):
    """A saved minilm2minilm given as ``model.name_or_path`` (e.g. a stage-0 model) comes back with the same
    outputs, and patching its encoder reaches the attention modules (a freshly built one needs
    ``share_sub_configs`` for that; a reloaded one must not silently stay on SDPA either)."""
    from hf_sparse import unpatch_model
    from hf_sparse.lab.finetune.seq2seq_models import build_seq2seq_model

    built, _ = bert2bert
    built.model.save_pretrained(tmp_path / "model")
    built.tokenizer.save_pretrained(tmp_path / "model")
    cfg = RunConfig.load(ROOT / "configs/translation/dense.yaml",
                         ["--model.name_or_path", str(tmp_path / "model"), "--model.config", "{}"])
    reloaded = build_seq2seq_model(cfg)
    assert not reloaded.decoder_only and reloaded.eos_token_id == built.eos_token_id
    torch.testing.assert_close(_forward(reloaded), _forward(built), atol=1e-5, rtol=1e-5)
    task = get_task("translation")
    task.decoder_only = False
    parts = RunConfig.load(ROOT / "configs/translation/dense.yaml",
                           ["--sparse.encoder.pattern", "sliding_window", "--sparse.encoder.options.window", "1"])
    task.apply_sparse(reloaded.model, parts.sparse_parts())
    try:
        dense = _forward(built)
        assert not torch.allclose(_forward(reloaded), dense, atol=1e-4)
        assert last_backends(reloaded.model)["encoder.encoder.layer.0.attention.self"] is not None
    finally:
        unpatch_model(reloaded.model)


def test_a_saved_bert2bert_takes_model_config_on_both_halves(bert2bert, tmp_path):
    """``model.config`` on a saved EncoderDecoderModel sets the key on the encoder and the decoder (as for
    ``minilm2minilm``): every attention module, self and cross, is built with it; an unknown key is a one-line
    ValueError naming it."""
    from hf_sparse.lab.finetune.seq2seq_models import build_seq2seq_model

    built, _ = bert2bert
    built.model.save_pretrained(tmp_path / "model")
    built.tokenizer.save_pretrained(tmp_path / "model")
    assert built.model.config.encoder.attention_probs_dropout_prob == 0.1  # MiniLM's default: the change is seen
    cfg = RunConfig.load(ROOT / "configs/translation/dense.yaml", ["--model.name_or_path", str(tmp_path / "model"),
                                                                   "--model.config", "{attention_probs_dropout_prob: 0}"])
    reloaded = build_seq2seq_model(cfg).model
    assert reloaded.config.encoder.attention_probs_dropout_prob == reloaded.config.decoder.attention_probs_dropout_prob == 0
    attention = [m for name, m in reloaded.named_modules() if name.endswith(("attention.self", "crossattention.self"))]
    assert len(attention) == 3 and all(m.dropout.p == 0 for m in attention)  # encoder, decoder self, cross
    cfg = RunConfig.load(ROOT / "configs/translation/dense.yaml", ["--model.name_or_path", str(tmp_path / "model"),
                                                                   "--model.config", "{attention_dropout: 0}"])
    with pytest.raises(ValueError, match="model.config.attention_dropout: BertConfig has no attribute"):
        build_seq2seq_model(cfg)


def test_decoder_only_rejects_an_encoder_part():
    task = get_task("translation")
    task.decoder_only = True
    cfg = RunConfig.load(ROOT / "configs/translation/gpt2_sliding_window.yaml",
                         ["--sparse", "{encoder: {pattern: sliding_window}}"])
    with pytest.raises(ConfigError, match="sparse.encoder: this model is decoder-only"):
        task.apply_sparse(torch.nn.Linear(1, 1), cfg.sparse_parts())
    with pytest.raises(ConfigError, match=r"per-part settings \(encoder\) are for seq2seq tasks"):
        get_task("sentiment").check_sparse_parts(cfg.sparse_parts())
