"""Translation data: columns ``source`` and ``target`` (``str``).

Offline (``source="offline"``; docs/design.md, section 5): Debian package synopses and their translations, from
the ``Translation-en/de/fr`` indexes joined on ``Description-md5`` (:mod:`.debian`):

* ``"offline:debian_en_de"`` (what ``"offline"`` means): English -> German synopses;
* ``"offline:debian_en_fr"``: English -> French (``"offline"`` with ``language_pair: en-fr`` picks it);
* ``"offline:debian_descriptions_en_de"`` / ``"offline:debian_descriptions_en_fr"``: whole descriptions, the
  synopsis, a blank line and the long description (paragraphs separated by a blank line, as
  :attr:`.debian.Description.long`) on both sides. Only pairs where both sides have a long description with
  the same number of paragraphs are kept (a translation with another paragraph count is likely out of date
  or misaligned); the dropped pairs are counted (:func:`debian_pairs`) and reported on first use.
  ``"offline"`` with a ``language_pair`` still picks a synopsis source. docs/data/debian_descriptions.md
  measures them.

Each English source text is kept once (the first package's translation); sources that are near-duplicates
of each other (MinHash LSH over word 3-grams, :mod:`.dedup`) fall into one group, and the seeded
train / validation / test split deals out whole groups (10% / 10% of the pairs by default), so no test
source has a near-copy in train. ``language_pair: de-en`` swaps the direction.

Hub data: ``wmt16:de-en``, ``opus_books:de-en`` (a ``translation`` column of ``{language: text}``; set
``language_pair``, e.g. ``en-de``), or any data set / local csv/json/parquet with ``source`` / ``target``
columns, columns named after the two languages, or the columns you name.
"""

from __future__ import annotations

from collections import Counter

import datasets

from .common import DataSourceError, notify
from .debian import Description, descriptions
from .dedup import near_duplicate_groups
from .pairs import PairColumns, build_pairs, parse_language_pair

_PAIRS = (("en", "de"), ("en", "fr"))
_SYNOPSES = {f"debian_{s}_{t}": (s, t) for s, t in _PAIRS}  # what "offline" + a language pair picks
WHOLE_DESCRIPTIONS = {f"debian_descriptions_{s}_{t}": (s, t) for s, t in _PAIRS}  # docs/data/debian_descriptions.md
_LANGUAGES = {**_SYNOPSES, **WHOLE_DESCRIPTIONS}  # offline name -> (source language, target language) as stored
OFFLINE = tuple(_LANGUAGES)  # OFFLINE[0] is what "offline" means


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
    offline = {name: (f"translation_{name}",
                      lambda name=name: _debian_dataset(*_LANGUAGES[name], whole=name in WHOLE_DESCRIPTIONS))
               for name in OFFLINE}
    return build_pairs(source, columns=candidates, offline=offline, seed=seed, validation_size=validation_size,
                       test_size=test_size, reverse=_reverse)


def _offline_for(pair: tuple[str, str]) -> str:
    for name, langs in _SYNOPSES.items():
        if set(langs) == set(pair):
            return name
    raise DataSourceError(
        f"no offline translation data for {'-'.join(pair)}; offline pairs: "
        + ", ".join("-".join(langs) for langs in _SYNOPSES.values()) + " (either direction)"
    )


def _reverse(name: str, pair: tuple[str, str] | None) -> bool:
    if pair is None:
        return False
    if set(pair) != set(_LANGUAGES[name]):
        raise DataSourceError(f"offline:{name} holds {'-'.join(_LANGUAGES[name])}, not {'-'.join(pair)}; "
                              "fix data.language_pair or data.source")
    return pair != _LANGUAGES[name]


def _text(description: Description, whole: bool) -> str:
    return f"{description.synopsis}\n\n{description.long}" if whole else description.synopsis


def debian_pairs(source_lang: str, target_lang: str, *, whole: bool = False) -> tuple[list[str], list[str], Counter]:
    """Parallel Debian descriptions: ``(sources, targets, counts)``.

    Each ``target_lang`` description is paired with the ``source_lang`` one of the same ``Description-md5``;
    the text is the synopsis, or with ``whole`` the synopsis + ``"\\n\\n"`` + the long description. With
    ``whole``, pairs where either side has no long description or the paragraph counts differ are dropped.
    Each source text is kept once (the first translation). ``counts``: ``translations``, ``kept`` and one key
    per reason a pair was dropped (``no_original``, ``no_long_description``, ``paragraph_count_differs``,
    ``duplicate_source``)."""
    originals = descriptions(source_lang)
    translations = descriptions(target_lang)
    sources, targets, seen = [], [], set()
    counts: Counter = Counter(translations=len(translations))
    for md5, translated in translations.items():
        original = originals.get(md5)
        if original is None:
            counts["no_original"] += 1
            continue
        if whole and not (original.paragraphs and translated.paragraphs):
            counts["no_long_description"] += 1
            continue
        if whole and len(original.paragraphs) != len(translated.paragraphs):
            counts["paragraph_count_differs"] += 1
            continue
        text = _text(original, whole)
        if text in seen:
            counts["duplicate_source"] += 1
            continue
        seen.add(text)
        sources.append(text)
        targets.append(_text(translated, whole))
    counts["kept"] = len(sources)
    return sources, targets, counts


def _debian_dataset(source_lang: str, target_lang: str, *, whole: bool) -> datasets.Dataset:
    sources, targets, counts = debian_pairs(source_lang, target_lang, whole=whole)
    if whole:
        notify(f"{source_lang}-{target_lang} whole descriptions: kept {counts['kept']:,} of {counts['translations']:,} "
               f"translations; dropped {counts['paragraph_count_differs']:,} with another paragraph count, "
               f"{counts['no_long_description']:,} without a long description on one side, "
               f"{counts['no_original']:,} without the original, {counts['duplicate_source']:,} repeated sources")
    what = "descriptions" if whole else "synopses"
    notify(f"grouping near-duplicate {what} of {len(sources):,} {source_lang}-{target_lang} pairs (first use only)")
    groups = near_duplicate_groups(sources)
    return datasets.Dataset.from_dict({"source": sources, "target": targets, "group": groups})
