"""Tiny random models of each supported family, their inputs and outputs, and the real MiniLM BERT folder."""

from __future__ import annotations

import torch


def minilm_path() -> str:
    """The offline MiniLM BERT folder (imported lazily: the fine-tuning stack needs ``datasets``, which the
    GPU machine's image lacks, and only the MiniLM tests need it)."""
    from hf_sparse.lab.finetune.models import minilm_path as path

    return path()


def tiny_model(family: str, seed: int = 0):
    """A small random-init model of ``family`` in eval mode."""
    import transformers as tf

    torch.manual_seed(seed)
    if family == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(
            vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=256, num_labels=3))
    elif family == "minilm":
        model = tf.BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    elif family == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=256))
    elif family == "vit":
        model = tf.ViTForImageClassification(tf.ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=4, num_labels=5))
    elif family == "deit":
        model = tf.DeiTForImageClassification(tf.DeiTConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=24,
            patch_size=4))
    elif family == "t5":
        model = tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0))
    elif family == "bart":
        model = tf.BartForConditionalGeneration(tf.BartConfig(
            vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256))
    elif family == "roberta":
        model = tf.RobertaModel(tf.RobertaConfig(
            vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    elif family == "distilbert":
        model = tf.DistilBertModel(tf.DistilBertConfig(vocab_size=120, dim=32, n_layers=1, n_heads=4, hidden_dim=64))
    elif family == "marian":
        model = tf.MarianMTModel(tf.MarianConfig(
            vocab_size=120, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, pad_token_id=0,
            decoder_start_token_id=0))
    elif family == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64))
    else:
        raise KeyError(family)
    return model.eval()


def model_inputs(family: str, batch: int = 2, length: int = 37, pad_from: int | None = 29, seed: int = 1):
    """Inputs for ``family``; for text models row 1 is right-padded from ``pad_from``."""
    gen = torch.Generator().manual_seed(seed)
    if family in ("vit", "deit"):
        size = 32 if family == "vit" else 24
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=gen)}
    ids = torch.randint(5, 100, (batch, length), generator=gen)
    if family == "minilm":
        ids = torch.randint(1000, 20000, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    if pad_from is not None and batch > 1:
        mask[1, pad_from:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family in ("t5", "bart", "marian"):
        inputs["decoder_input_ids"] = torch.randint(5, 100, (batch, 23), generator=gen)
    return inputs


def run_model(model, inputs) -> torch.Tensor:
    """The output to compare, ``[B, L, ...]`` per position: token logits of language models, else the last
    hidden state (classification logits of random tiny models are too small to tell patterns apart)."""
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
    logits = getattr(output, "logits", None)
    if logits is not None and logits.dim() == 3:
        return logits
    hidden = getattr(output, "hidden_states", None)
    return hidden[-1] if hidden is not None else output.last_hidden_state
