"""Text-pair data for seq2seq tasks: columns ``source`` and ``target`` (both ``str``).

Shared by :mod:`.translation` and :mod:`.summarization`: resolving the ``source`` string, reading hub /
local data with configurable columns (or a ``translation`` column of ``{language: text}`` mappings, as in
``wmt16`` / ``opus_books``, picked by a language pair), and the group splits of the offline data sets
(near-duplicates never straddle train and test, see :mod:`.dedup`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets

from .common import (
    DataSourceError,
    cached,
    load_hub,
    load_local,
    make_splits,
    resolve_source,
    standardize,
    tag_source,
)
from .dedup import group_split

TRANSLATION_COLUMN = "translation"


@dataclass(frozen=True)
class PairColumns:
    """How to find the text pair in hub / local data.

    Attributes:
        source / target: candidate column names, first present wins (a user's column name replaces them).
        language_pair: ``"en-de"`` = source language ``en``, target ``de``; used with a ``translation``
            column of ``{language: text}`` mappings.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]
    language_pair: str | None = None


def parse_language_pair(pair: str | None) -> tuple[str, str] | None:
    """``"en-de"`` -> ``("en", "de")``; ``None`` stays ``None``; :class:`DataSourceError` for anything else."""
    if pair is None:
        return None
    parts = pair.split("-") if isinstance(pair, str) else []
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise DataSourceError(f"language pair {pair!r} must look like 'en-de' (source language - target language)")
    return parts[0], parts[1]


def load_external_pairs(source: str, columns: PairColumns, offline_names: tuple[str, ...]) -> datasets.DatasetDict:
    """Hub or local data (``source`` is not offline) reduced to ``source`` / ``target`` columns."""
    src = resolve_source(source, offline_names)
    raw = load_local(src.name) if src.kind == "local" else load_hub(src)
    names = set.intersection(*(set(ds.column_names) for ds in raw.values()))
    pair = parse_language_pair(columns.language_pair)
    has_columns = any(c in names for c in columns.source) and any(c in names for c in columns.target)
    if TRANSLATION_COLUMN in names and not has_columns:
        if pair is None:
            raise DataSourceError(
                f"{src.describe()} has a 'translation' column of {{language: text}} mappings; set data.language_pair "
                "(e.g. en-de) to choose the direction"
            )
        raw = _from_translation_column(raw, pair, src.describe())
    else:
        raw = standardize(raw, {"source": columns.source, "target": columns.target}, label=None)
    return tag_source(raw, src.describe())


def _from_translation_column(
    raw: datasets.DatasetDict, pair: tuple[str, str], name: str
) -> datasets.DatasetDict:
    first = next(iter(raw.values()))[0][TRANSLATION_COLUMN]
    missing = [lang for lang in pair if lang not in first]
    if missing:
        raise DataSourceError(
            f"{name}'s translation column has languages {', '.join(sorted(first))}, not {', '.join(missing)}; "
            "fix data.language_pair"
        )
    src_lang, tgt_lang = pair

    def split_pair(rows: dict[str, list]) -> dict[str, list]:
        items = rows[TRANSLATION_COLUMN]
        return {"source": [t[src_lang] for t in items], "target": [t[tgt_lang] for t in items]}

    return datasets.DatasetDict({
        split: ds.map(split_pair, batched=True, remove_columns=ds.column_names, desc="pairs")
        for split, ds in raw.items()
    })


def build_pairs(
    source: str,
    *,
    columns: PairColumns,
    offline: dict[str, tuple[str, Callable[[], datasets.Dataset]]],
    seed: int,
    validation_size: float | int,
    test_size: float | int,
    reverse: Callable[[str, tuple[str, str] | None], bool] | None = None,
) -> datasets.DatasetDict:
    """Train / validation / test splits with columns ``source`` / ``target``.

    ``offline`` maps each offline name to ``(cache name, build)``; ``build()`` returns one Dataset with
    columns ``source``, ``target`` and ``group`` (near-duplicate group ids): it runs once and is cached, and
    the splits are dealt out by group (seeded). ``reverse(name, pair)`` says whether the offline pair must
    be swapped for ``columns.language_pair``. Hub / local data keep their own splits; missing ones are
    carved out of train at random.
    """
    names = tuple(offline)
    src = resolve_source(source, names)
    if src.kind != "offline":
        raw = load_external_pairs(source, columns, names)
        return make_splits(raw, seed=seed, validation_size=validation_size, test_size=test_size, stratify=None)
    cache_name, build = offline[src.name]
    full = cached(cache_name, lambda: datasets.DatasetDict({"train": build()}))["train"]
    parts = group_split(full["group"], {"test": test_size, "validation": validation_size}, seed=seed)
    full = full.remove_columns("group")
    if reverse is not None and reverse(src.name, parse_language_pair(columns.language_pair)):
        full = full.rename_columns({"source": "target", "target": "source"}).select_columns(["source", "target"])
    out = datasets.DatasetDict({split: full.select(parts[split]) for split in ("train", "validation", "test")})
    if min(len(ds) for ds in out.values()) == 0:
        raise DataSourceError(f"offline:{src.name} is too small for the requested validation/test sizes")
    return tag_source(out, src.describe())
