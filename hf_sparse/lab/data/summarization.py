"""Summarization data: columns ``source`` (the text) and ``target`` (its summary), both ``str``.

Offline (``source="offline"`` = ``"offline:debian_descriptions"``; docs/design.md, section 5): English Debian
package descriptions from the ``Translation-en`` index (:mod:`.debian`): the long description (paragraphs
separated by blank lines) is the source, the one-line synopsis the summary.

Deduplicated: about a quarter of the descriptions are templated boilerplate ("This package contains the
debugging symbols / development files / documentation for ...") repeated across a source package's
binaries. Descriptions are grouped by near-duplication (MinHash LSH over word 3-grams, estimated Jaccard
>= 0.7, :mod:`.dedup`) and only the first of each group is kept, so no two kept sources are near-copies and
none can leak from train into test; the seeded split is 10% / 10% validation / test by default.

``"offline:manpages"`` (:mod:`.manpages`, docs/data/manpages.md): long inputs, Debian manual pages rendered
to text (NAME section removed) -> their one-line NAME description; split by page name and target.

Hub data: ``cnn_dailymail:3.0.0`` (``article`` / ``highlights``), ``xsum`` (``document`` / ``summary``),
``billsum`` (``text`` / ``summary``) or local csv/json/parquet; other column names via ``source_column`` /
``target_column``.
"""

from __future__ import annotations

import datasets

from .common import notify
from .debian import descriptions
from .dedup import near_duplicate_groups
from .manpages import VERSION as MANPAGES_VERSION
from .manpages import manpage_summaries
from .pairs import PairColumns, build_pairs

OFFLINE = ("debian_descriptions", "manpages")
SOURCE_COLUMNS = ("source", "document", "article", "text", "dialogue", "content")
TARGET_COLUMNS = ("target", "summary", "highlights", "abstract", "headline", "title")


def build_summarization(
    source: str = "offline",
    *,
    seed: int = 0,
    validation_size: float | int = 0.1,
    test_size: float | int = 0.1,
    source_column: str | None = None,
    target_column: str | None = None,
) -> datasets.DatasetDict:
    """Train / validation / test splits of a summarization data set with columns ``source`` and ``target``.

    Args: as :func:`hf_sparse.lab.data.build_translation` (no language pair).
    """
    columns = PairColumns(
        source=(source_column,) if source_column else SOURCE_COLUMNS,
        target=(target_column,) if target_column else TARGET_COLUMNS,
    )
    offline = {"debian_descriptions": ("summarization_debian_descriptions", _debian_summaries),
               "manpages": (f"summarization_manpages_v{MANPAGES_VERSION}", manpage_summaries)}
    return build_pairs(source, columns=columns, offline=offline, seed=seed, validation_size=validation_size,
                       test_size=test_size)


def _debian_summaries() -> datasets.Dataset:
    items = [d for d in descriptions("en").values() if d.paragraphs]
    notify(f"deduplicating {len(items):,} Debian descriptions (MinHash LSH; first use only)")
    groups = near_duplicate_groups([d.long for d in items])
    kept, seen = [], set()
    for item, group in zip(items, groups, strict=True):
        if group not in seen:
            seen.add(group)
            kept.append(item)
    notify(f"kept {len(kept):,} of {len(items):,} descriptions (one per near-duplicate group)")
    return datasets.Dataset.from_dict({
        "source": [d.long for d in kept], "target": [d.synopsis for d in kept], "group": list(range(len(kept))),
    })
