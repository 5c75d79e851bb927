"""Seq2seq data builders: Debian index parsing, near-duplicate groups, leak-free offline splits, and the
hub/local code path (translation dict columns, language pairs, column names) on local files."""

from __future__ import annotations

import json

import pytest

from hf_sparse.lab.data import DataSourceError, build_summarization, build_translation, data_dir, source_of
from hf_sparse.lab.data.debian import parse_index
from hf_sparse.lab.data.dedup import group_split, near_duplicate_groups, shingles

INDEX = """Package: foo
Description-md5: 0123
Description-en: tool that frobs widgets
 Foo frobs widgets quickly.
 It is fast.
 .
 This package contains the documentation.

Package: bar
Description-md5: 4567
Description-en: bar without long description
"""


def test_parse_index_splits_synopsis_and_paragraphs():
    items = parse_index(INDEX, "en")
    assert [(d.package, d.md5, d.synopsis) for d in items] == [
        ("foo", "0123", "tool that frobs widgets"), ("bar", "4567", "bar without long description")]
    assert items[0].paragraphs == ("Foo frobs widgets quickly. It is fast.", "This package contains the documentation.")
    assert items[0].long == "Foo frobs widgets quickly. It is fast.\n\nThis package contains the documentation."
    assert items[1].paragraphs == () and parse_index(INDEX, "de") == []


def test_near_duplicates_group_and_splits_keep_groups_whole():
    base = "this package provides the development headers and static library for the frobnicator widget toolkit"
    texts = [base, base + " version two", "a completely different text about sailing boats on quiet lakes today",
             base.upper(), "another unrelated sentence describing a chess engine with a graphical interface"]
    groups = near_duplicate_groups(texts)
    assert groups[0] == groups[1] == groups[3] and len({groups[0], groups[2], groups[4]}) == 3
    parts = group_split([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], {"test": 2, "validation": 2}, seed=0)
    assert sorted(sum((list(v) for v in parts.values()), [])) == list(range(10))
    for rows in parts.values():
        assert all(r ^ 1 in set(rows.tolist()) for r in rows.tolist())  # pairs (2k, 2k+1) stay together


def _cached_or_skip(name: str) -> None:
    if not (data_dir() / name / "dataset_dict.json").exists():
        pytest.skip(f"{name} is not built under {data_dir()}: run `hf-sparse prepare-data` (needs a Debian mirror)")


def _max_train_similarity(dd, sample: int = 200) -> float:
    """Exact word-3-gram Jaccard of ``sample`` test sources against their closest train source (every train
    source sharing a 3-gram with them is compared; no hashing)."""
    from collections import Counter

    tests = [shingles(t) for t in dd["test"]["source"][:sample]]
    postings: dict[bytes, list[int]] = {}
    for k, grams in enumerate(tests):
        for gram in grams:
            postings.setdefault(gram, []).append(k)
    worst = 0.0
    for text in dd["train"]["source"]:
        grams = shingles(text)
        overlap = Counter(k for gram in grams & postings.keys() for k in postings[gram])
        for k, shared in overlap.items():
            worst = max(worst, shared / (len(grams) + len(tests[k]) - shared))
    return worst


@pytest.mark.parametrize("builder, name, cache, pairs", [
    (build_translation, "offline:debian_en_de", "translation_debian_en_de", (12_000, 14_000)),
    (build_translation, "offline:debian_en_fr", "translation_debian_en_fr", (18_000, 20_500)),
    (build_translation, "offline:debian_descriptions_en_de", "translation_debian_descriptions_en_de", (12_500, 14_000)),
    (build_translation, "offline:debian_descriptions_en_fr", "translation_debian_descriptions_en_fr", (18_500, 20_500)),
    (build_summarization, "offline:debian_descriptions", "summarization_debian_descriptions", (38_000, 46_000)),
])
def test_offline_splits_have_no_leaks(builder, name, cache, pairs):
    _cached_or_skip(cache)
    dd = builder(name)
    assert list(dd) == ["train", "validation", "test"] and source_of(dd) == name
    assert all(ds.column_names == ["source", "target"] for ds in dd.values())
    total = sum(len(ds) for ds in dd.values())
    assert pairs[0] <= total <= pairs[1]
    assert abs(len(dd["test"]) - 0.1 * total) < 0.01 * total and abs(len(dd["validation"]) - 0.1 * total) < 0.01 * total
    norm = [{b" ".join(shingles(t, 1_000)) for t in ds["source"]} for ds in dd.values()]
    assert not (norm[0] & norm[2]) and not (norm[0] & norm[1])  # no exact duplicates across splits
    assert _max_train_similarity(dd) < 0.7
    assert builder(name, seed=1)["test"]["source"] != dd["test"]["source"]  # the seed deals other groups


def test_summarization_is_deduplicated_and_language_pair_reverses():
    _cached_or_skip("summarization_debian_descriptions")
    train = build_summarization()["train"]
    boilerplate = [s for s in train["source"] if s.startswith("This package contains the debugging symbols for")]
    assert len(boilerplate) < 20  # thousands before deduplication
    assert all(len(s) > len(t) / 2 for s, t in zip(train["source"][:200], train["target"][:200], strict=True))
    _cached_or_skip("translation_debian_en_de")
    en_de, de_en = build_translation(), build_translation("offline", language_pair="de-en")
    assert de_en["test"]["source"] == en_de["test"]["target"] and de_en["test"]["target"] == en_de["test"]["source"]
    assert source_of(build_translation(language_pair="fr-en")) == "offline:debian_en_fr"


def test_local_files_with_columns_and_translation_dicts(tmp_path):
    rows = [{"translation": {"en": f"house number {i}", "de": f"Haus Nummer {i}"}} for i in range(40)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dd = build_translation(str(tmp_path / "pairs.jsonl"), language_pair="de-en", test_size=4, validation_size=4)
    assert [len(dd[s]) for s in dd] == [32, 4, 4] and dd["train"][0]["source"].startswith("Haus Nummer")
    with pytest.raises(DataSourceError, match="set data.language_pair"):
        build_translation(str(tmp_path / "pairs.jsonl"))
    with pytest.raises(DataSourceError, match="not fr"):
        build_translation(str(tmp_path / "pairs.jsonl"), language_pair="en-fr")
    (tmp_path / "news.csv").write_text("article,highlights\n" + "".join(f"long text {i} here,short {i}\n" for i in range(20)))
    dd = build_summarization(str(tmp_path / "news.csv"), test_size=2, validation_size=2)
    assert dd["test"].column_names == ["source", "target"] and len(dd["train"]) == 16
    with pytest.raises(DataSourceError, match="no source column: expected one of body"):
        build_summarization(str(tmp_path / "news.csv"), source_column="body")
    with pytest.raises(DataSourceError, match="language pair 'english' must look like 'en-de'"):
        build_translation(language_pair="english")
    with pytest.raises(DataSourceError, match="no offline translation data for en-ja"):
        build_translation(language_pair="en-ja")
