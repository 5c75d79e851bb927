"""Whole Debian descriptions as translation data (offline:debian_descriptions_en_de / _en_fr), built on a small
synthetic Translation-en / Translation-de index (the apt cache is never touched)."""

from __future__ import annotations

import pytest

from hf_sparse.lab.data import DataSourceError, build_translation, source_of, translation
from hf_sparse.lab.data.debian import parse_index
from hf_sparse.lab.data.dedup import near_duplicate_groups

_TOPICS = ["sailing boats", "chess engines", "audio mixers", "tax forms", "star maps", "weather radar", "font editors",
           "bird songs", "train timetables", "knitting patterns", "music scores", "garden planners"]


def _stanza(language: str, md5: str, synopsis: str, paragraphs: list[str]) -> str:
    body = "\n .\n".join(" " + p for p in paragraphs)
    return f"Package: pkg{md5}\nDescription-md5: {md5}\nDescription-{language}: {synopsis}" + (f"\n{body}" if body else "")


def _indexes() -> dict[str, str]:
    """English and German indexes: 12 distinct two-paragraph descriptions, 3 near-copies of the first, one
    German translation with one paragraph too many, one with one too few, one without a long description."""
    en, de = [], []
    for k, topic in enumerate(_TOPICS):
        words = f"a program for {topic} with many options and a friendly interface number {k}"
        en.append(_stanza("en", f"m{k}", f"tool for {topic}", [words, f"It also handles {topic} files."]))
        de.append(_stanza("de", f"m{k}", f"Werkzeug für {topic}", [f"Ein Programm für {topic} Nummer {k}",
                                                                     f"Es kann auch {topic} Dateien."]))
    near = en[0].split("\n")[3].strip()
    for k in range(3):
        en.append(_stanza("en", f"n{k}", "tool for sailing boats", [near + f" variant {k}", "It also handles sailing boats files."]))
        de.append(_stanza("de", f"n{k}", "Werkzeug für Segelboote", [f"Ein Programm Variante {k}", "Es kann auch Dateien."]))
    en.append(_stanza("en", "x1", "extra paragraph tool", ["Only one paragraph here about yachts and sails."]))
    de.append(_stanza("de", "x1", "Werkzeug mit Extra", ["Ein Absatz über Yachten.", "Ein zweiter Absatz."]))
    en.append(_stanza("en", "x2", "missing paragraph tool", ["First paragraph on compilers.", "Second on linkers."]))
    de.append(_stanza("de", "x2", "Werkzeug ohne Absatz", ["Erster Absatz über Compiler und Linker."]))
    en.append(_stanza("en", "x3", "no long German text", ["A paragraph about databases and queries."]))
    de.append(_stanza("de", "x3", "kein deutscher Text", []))
    return {"en": "\n\n".join(en) + "\n", "de": "\n\n".join(de) + "\n"}


@pytest.fixture
def fake_debian(monkeypatch, tmp_path):
    """``descriptions`` from the synthetic indexes, and an empty cache folder."""
    monkeypatch.setenv("HF_SPARSE_DATA", str(tmp_path))
    texts = _indexes()
    parsed = {lang: {d.md5: d for d in parse_index(text, lang)} for lang, text in texts.items()}
    monkeypatch.setattr(translation, "descriptions", lambda language: parsed[language])
    return parsed


def test_pairs_are_synopsis_and_paragraphs_and_unequal_counts_are_dropped(fake_debian):
    sources, targets, counts = translation.debian_pairs("en", "de", whole=True)
    kept = [md5 for md5, d in fake_debian["de"].items()
            if d.paragraphs and len(d.paragraphs) == len(fake_debian["en"][md5].paragraphs)]
    expected = [(f"{fake_debian['en'][m].synopsis}\n\n{fake_debian['en'][m].long}",
                 f"{fake_debian['de'][m].synopsis}\n\n{fake_debian['de'][m].long}") for m in kept]
    assert list(zip(sources, targets, strict=True)) == expected
    assert all(s.count("\n\n") == 2 and t.count("\n\n") == 2 for s, t in expected)  # synopsis + two paragraphs
    assert counts["paragraph_count_differs"] == 2 and counts["no_long_description"] == 1
    assert counts["kept"] == len(kept) and counts["translations"] == len(fake_debian["de"])
    assert sum(v for k, v in counts.items() if k not in ("kept", "translations")) == counts["translations"] - len(kept)
    synopses, _, _ = translation.debian_pairs("en", "de")  # the synopsis source keeps the dropped ones
    assert "extra paragraph tool" in synopses and not any(s.startswith("extra paragraph tool") for s in sources)


def test_splits_keep_near_duplicates_together_and_de_en_swaps(fake_debian):
    dd = build_translation("offline:debian_descriptions_en_de", seed=0, validation_size=3, test_size=3)
    assert source_of(dd) == "offline:debian_descriptions_en_de"
    assert all(ds.column_names == ["source", "target"] for ds in dd.values())
    sources, targets, _ = translation.debian_pairs("en", "de", whole=True)
    assert sorted(s for ds in dd.values() for s in ds["source"]) == sorted(sources)
    groups = near_duplicate_groups(sources)
    assert len({groups[k] for k, s in enumerate(sources) if "sailing boats with many options" in s}) == 1
    assert len(set(groups)) == len(sources) - 3  # the premise: three near-copies join the first description
    sailing = {split for split, ds in dd.items() for s in ds["source"] if "sailing boats with many options" in s}
    assert len(sailing) == 1  # the first description and its three near-copies share one split
    for seed in range(1, 6):
        other = build_translation("offline:debian_descriptions_en_de", seed=seed, validation_size=3, test_size=3)
        assert len({split for split, ds in other.items() for s in ds["source"] if "sailing boats with" in s}) == 1
    de_en = build_translation("offline:debian_descriptions_en_de", language_pair="de-en", validation_size=3, test_size=3)
    for split in dd:
        assert de_en[split]["source"] == dd[split]["target"] and de_en[split]["target"] == dd[split]["source"]
    pairs = dict(zip(sources, targets, strict=True))
    assert all(pairs[s] == t for s, t in zip(dd["test"]["source"], dd["test"]["target"], strict=True))


def test_offline_language_pair_still_means_synopses_and_bad_names_fail_in_one_line(fake_debian):
    dd = build_translation("offline", language_pair="en-de", validation_size=2, test_size=2)
    assert source_of(dd) == "offline:debian_en_de" and all("\n" not in s for s in dd["train"]["source"])
    with pytest.raises(DataSourceError, match="unknown offline data set 'debian_descriptions_en_ja'; choose one of: "
                                              ".*debian_descriptions_en_fr") as info:
        build_translation("offline:debian_descriptions_en_ja")
    assert "\n" not in str(info.value)
    with pytest.raises(DataSourceError, match="holds en-de, not en-fr; fix data.language_pair or data.source"):
        build_translation("offline:debian_descriptions_en_de", language_pair="en-fr")
