"""Manual pages as long-input summarization (offline:manpages): the NAME line parsed out of pages rendered by the
real groff, ``.so`` redirects / empty pages / pages without NAME counted and skipped, the split rule (no page
name and no target in two splits), and a one-line error naming a package that cannot be fetched."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from hf_sparse.lab.data import DataSourceError, build_summarization, data_dir, manpages, source_of
from hf_sparse.lab.data import common as data_common

needs_groff = pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed (apt-get install groff-base)")

PAGE = r""".\" A hand-written page
.TH FROB 3 2024-01-01 "test" "Test Manual"
.SH NAME
frob, unfrob \- turn widgets
inside out
.SH SYNOPSIS
.B #include <frob.h>
.PP
.BI "int frob(int " widget );
.SH DESCRIPTION
The
.BR frob ()
function turns a \fIwidget\fP inside out.
A very long paragraph stays on one line after rendering, however many words it has.
.SH SEE ALSO
.BR unfrob (3)
"""


def _parse(roff: str, file: str = "man3/frob.3.gz") -> tuple[manpages.Page | None, Counter]:
    counts: Counter = Counter()
    return manpages.parse_page("test", file, roff, counts), counts


@needs_groff
def test_name_line_is_the_target_and_leaves_the_source():
    page, counts = _parse(PAGE)
    assert counts == Counter(rendered=1)
    assert page.description == "turn widgets inside out"
    assert page.names == ("frob", "unfrob")
    text = page.text
    assert "NAME" not in text and "turn widgets" not in text and "FROB(3)" not in text  # NAME, header, footer gone
    assert text.splitlines()[0] == "SYNOPSIS" and "DESCRIPTION" in text and "SEE ALSO" in text
    assert "The frob() function turns a widget inside out. A very long paragraph stays on one line" in text
    assert "#include <frob.h>" in text and "  " not in text


@needs_groff
def test_redirects_empty_pages_and_pages_without_name_are_counted_and_skipped():
    assert manpages.is_redirect('.\\" comment\n.so man3/frob.3\n')
    assert not manpages.is_redirect(PAGE)
    for roff, reason in ((".so man3/frob.3\n", "redirect"), ('.\\" only a comment\n.TH EMPTY 1\n', "empty"),
                         (PAGE.replace(".SH NAME", ".SH OVERVIEW"), "no_name"),
                         (PAGE.replace(r"\- turn", "turn"), "no_name"), ("", "empty")):
        page, counts = _parse(roff)
        assert page is None and counts == Counter({reason: 1}), (reason, counts)


def _word(k: int) -> str:
    return "".join("abcdefghij"[int(d)] for d in str(k))  # no digits: targets are grouped with numbers as 0


def _page(names: tuple[str, ...], description: str, text: str) -> manpages.Page:
    return manpages.Page("test", f"man1/{names[0]}.1.gz", names, description, text)


def _pages() -> list[manpages.Page]:
    pages = []
    for k in range(60):  # 60 distinct pages; a few share a name (two sections) or a target with another page
        text = " ".join(f"p{k}w{i}" for i in range(400))
        name = f"tool{k - 1}" if k % 10 == 1 else f"tool{k}"  # pages 1, 11, ... share the name of page k - 1
        target = f"Do  thing {_word(k - 2 if k % 10 == 2 else k)}"  # pages 2, 12, ... share the target of k - 2
        pages.append(_page((name, f"alias{k}"), target, text))
    pages.append(_page(("short",), "too short", "few words"))
    pages.append(pages[5])  # the same text twice (same page in two packages)
    return pages


def test_select_drops_short_pages_and_duplicate_texts():
    kept, dropped = manpages.select_pages(_pages())
    assert len(kept) == 60 and dropped == {"short": 1, "duplicate": 1}


def test_groups_join_names_and_targets():
    kept, _ = manpages.select_pages(_pages())
    groups = manpages.page_groups(kept, near_duplicates=False)
    assert groups[0] == groups[1] and groups[10] == groups[11] and groups[0] == groups[2]
    assert groups[3] != groups[0] and len(set(groups)) == 60 - 6 - 6
    assert manpages.target_key("What is new for  perl v5.30.0") == manpages.target_key("what is new for perl v5.4.1")


def test_split_keeps_names_and_targets_in_one_split(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_SPARSE_DATA", str(tmp_path))
    monkeypatch.setattr(manpages, "collect_pages", lambda: (tuple(_pages()), {"files": 62}))
    dd = build_summarization("offline:manpages", seed=3, validation_size=0.2, test_size=0.2)
    assert source_of(dd) == "offline:manpages" and dd["train"].column_names == ["source", "target"]
    assert sum(len(ds) for ds in dd.values()) == 60 and min(len(ds) for ds in dd.values()) >= 8
    by_text = {p.text: p for p in _pages()}
    seen: dict[str, str] = {}
    for split, ds in dd.items():
        for text, target in zip(ds["source"], ds["target"], strict=True):
            page = by_text[text]
            assert page.description == target
            for key in (*page.names, target):
                assert seen.setdefault(key, split) == split, f"{key!r} is in {seen[key]} and {split}"


def test_missing_package_is_one_line_naming_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_SPARSE_DATA", str(tmp_path))

    def unreachable(*args, **kwargs):  # apt-get download / update against a mirror that does not answer
        class Result:
            returncode, stdout, stderr = 100, "", "E: Unable to locate package manpages-dev"
        return Result()

    monkeypatch.setattr(data_common.subprocess, "run", unreachable)
    with pytest.raises(DataSourceError) as info:
        manpages.package_dir("manpages-dev")
    message = str(info.value)
    assert "\n" not in message and "manpages-dev" in message and "apt-get download manpages-dev" in message


def test_built_data_is_long_and_leak_free():
    name = f"summarization_manpages_v{manpages.VERSION}"
    if not (data_dir() / name / "dataset_dict.json").exists():
        pytest.skip(f"{name} is not built under {data_dir()}: run `hf-sparse prepare-data` (needs a Debian mirror)")
    dd = build_summarization("offline:manpages")
    assert 1_500 <= sum(len(ds) for ds in dd.values()) <= 3_000
    targets = {split: {t.lower() for t in ds["target"]} for split, ds in dd.items()}
    assert not targets["train"] & targets["test"] and not targets["train"] & targets["validation"]
    assert not targets["validation"] & targets["test"]
    for ds in dd.values():
        assert min(len(t.split()) for t in ds["source"]) >= manpages.MIN_WORDS
