"""Translation data: columns ``source`` and ``target`` (``str``).

Offline (``source="offline"``; docs/design.md, section 5): Debian package synopses and their translations, from
the ``Translation-en/de/fr`` indexes joined on ``Description-md5`` (:mod:`.debian`):

* ``"offline:debian_en_de"`` (what ``"offline"`` means): English -> German synopses;
* ``"offline:debian_en_fr"``: English -> French (``"offline"`` with ``language_pair: en-fr`` picks it).

Each English synopsis is kept once (the first package's translation); synopses that are near-duplicates
of each other (MinHash LSH over word 3-grams, :mod:`.dedup`) fall into one group, and the seeded
train / validation / test split deals out whole groups (10% / 10% of the pairs by default), so no test
synopsis has a near-copy in train. ``language_pair: de-en`` swaps the direction.

Hub data: ``wmt16:de-en``, ``opus_books:de-en`` (a ``translation`` column of ``{language: text}``; set
``language_pair``, e.g. ``en-de``), or any data set / local csv/json/parquet with ``source`` / ``target``
columns, columns named after the two languages, or the columns you name.
"""

from __future__ import annotations

import datasets

from .common import DataSourceError, notify
from .debian import descriptions
from .dedup import near_duplicate_groups
from .pairs import PairColumns, build_pairs, parse_language_pair

OFFLINE = ("debian_en_de", "debian_en_fr")
_LANGUAGES = {"debian_en_de": ("en", "de"), "debian_en_fr": ("en", "fr")}


def build_translation(
    source: str = "offline",
    *,
    seed: int = 0,
    validation_size: float | int = 0.1,
    test_size: float | int = 0.1,
    language_pair: str | None = None,
    source_column: str | None = None,
    target_column: str | None = None,
) -> datasets.DatasetDict:
    """Train / validation / test splits of a translation data set with columns ``source`` and ``target``.

    Args:
        source: ``"offline"`` / ``"offline:<name>"``, a local file/folder, or a hub data set (``"name:config"``).
        seed, validation_size, test_size: as :func:`hf_sparse.lab.data.build_sentiment`.
        language_pair: ``"<source language>-<target language>"``; picks the direction of a ``translation``
            column and of the offline data (``None``: the offline default ``en-de``).
        source_column / target_column: column names in hub / local data (default: ``source`` / ``target``,
            ``src`` / ``tgt``, or the language codes of ``language_pair``).
    """
    pair = parse_language_pair(language_pair)
    if source == "offline" and pair is not None:
        source = "offline:" + _offline_for(pair)
    candidates = PairColumns(
        source=(source_column,) if source_column else ("source", "src", *(pair[:1] if pair else ())),
        target=(target_column,) if target_column else ("target", "tgt", *(pair[1:] if pair else ())),
        language_pair=language_pair,
    )
    offline = {name: (f"translation_{name}", lambda name=name: _debian_pairs(*_LANGUAGES[name])) for name in OFFLINE}
    return build_pairs(source, columns=candidates, offline=offline, seed=seed, validation_size=validation_size,
                       test_size=test_size, reverse=_reverse)


def _offline_for(pair: tuple[str, str]) -> str:
    for name, langs in _LANGUAGES.items():
        if set(langs) == set(pair):
            return name
    raise DataSourceError(
        f"no offline translation data for {'-'.join(pair)}; offline pairs: "
        + ", ".join("-".join(langs) for langs in _LANGUAGES.values()) + " (either direction)"
    )


def _reverse(name: str, pair: tuple[str, str] | None) -> bool:
    if pair is None:
        return False
    if set(pair) != set(_LANGUAGES[name]):
        raise DataSourceError(f"offline:{name} holds {'-'.join(_LANGUAGES[name])}, not {'-'.join(pair)}; "
                              "fix data.language_pair or data.source")
    return pair != _LANGUAGES[name]


def _debian_pairs(source_lang: str, target_lang: str) -> datasets.Dataset:
    originals = descriptions(source_lang)
    sources, targets, seen = [], [], set()
    for md5, translated in descriptions(target_lang).items():
        original = originals.get(md5)
        if original is None or original.synopsis in seen:
            continue
        seen.add(original.synopsis)
        sources.append(original.synopsis)
        targets.append(translated.synopsis)
    notify(f"grouping near-duplicate synopses of {len(sources):,} {source_lang}-{target_lang} pairs (first use only)")
    groups = near_duplicate_groups(sources)
    return datasets.Dataset.from_dict({"source": sources, "target": targets, "group": groups})
