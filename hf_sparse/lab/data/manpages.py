"""Debian manual pages as long-input summarization (``offline:manpages``): a page's text -> its one-line
NAME description (the ``whatis`` line, e.g. ``malloc(3)`` -> "allocate and free dynamic memory").

Construction (:func:`collect_pages`, then :func:`manpage_summaries`):

1. The Debian packages in :data:`PACKAGES` (all in ``main``) are fetched with ``apt-get download`` +
   ``dpkg -x`` into ``<data_dir>/debian/<package>`` (:func:`.common.unpack_debian`; no root needed). The
   page files are the regular files under ``usr/share/man/man<section>/``: symbolic links (aliases) are
   skipped, and so are ``.so`` redirect pages (counted).
2. Each page is rendered to plain text by ``groff -t -k -man -Tutf8`` (tbl, preconv) with hyphenation off and
   a line length so wide that every paragraph is one line; the running header and footer and horizontal rules
   (lines of only ``_`` / ``-`` / ``=``) are dropped, runs of spaces inside a line collapsed and runs of blank
   lines reduced to one.
3. The NAME section of the rendered page is split at its first " - " (``\\-`` in the roff source): the part
   before lists the page's names, the part after is the **target**; the **source** is the rendered page with
   the NAME section removed. Pages that render empty, have no NAME section or no " - " in it, or whose text
   is shorter than :data:`MIN_WORDS` words, are counted and skipped.
4. Deduplication and groups for the split: a source text that occurs twice is kept once; pages are then
   joined into groups (union-find) when they share a page name (file name or a name of the NAME line, so all
   sections / aliases of a name, e.g. ``printf(1)`` and ``printf(3)``), the same target (:func:`target_key`:
   lower case, numbers as ``0``, so perl's per-release "what is new for perl v5.x" pages are one group), or
   near-duplicate sources (:func:`.dedup.near_duplicate_groups`). :func:`.pairs.build_pairs` deals whole groups
   to the splits, so no page name and no target text occurs in two splits.

The counts and MiniLM token quartiles are measured in docs/data/manpages.md; ``python -m
hf_sparse.lab.data.manpages`` prints them.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import datasets

from .common import DataSourceError, data_dir, notify, unpack_debian
from .dedup import Groups, near_duplicate_groups

SOURCE = "offline:manpages"
#: Debian packages (all in ``main``) whose manual pages are used, in order of priority for duplicates.
PACKAGES = ("manpages", "manpages-dev", "perl-doc", "git-man", "libssl-doc", "ncurses-doc", "systemd", "tcl8.6-doc",
            "tk8.6-doc", "libx11-doc", "lvm2", "libsystemd-dev")
#: Pages whose text (NAME section removed) has fewer words are skipped.
MIN_WORDS = 300
#: Part of the cache name: bump it when the construction or the settings above change.
VERSION = 1
GROFF = ("groff", "-t", "-k", "-man", "-Tutf8", "-rLL=3000n", "-rHY=0", "-rcR=1", "-P", "-cbou")
_SEPARATOR = re.compile(r"\s+[-\u2212\u2010\u2013\u2014]+\s+")
_SECTION_DIR = re.compile(r"man[0-9n][a-z]*")
_MARKER = ".unpacked"
_RULE = re.compile(r"[-_=~\u2500\u2501\u2014\u2212]{3,}")  # a horizontal rule (Tcl/Tk's .BS/.BE) across the page


@dataclass(frozen=True)
class Page:
    """One rendered manual page.

    Attributes:
        package: the Debian package it comes from.
        file: its path below ``usr/share/man`` (e.g. ``man3/malloc.3.gz``).
        names: the page names (file name and the NAME line's names), lower case.
        description: the NAME line's description (the target).
        text: the rendered page without its NAME section (the source).
    """

    package: str
    file: str
    names: tuple[str, ...]
    description: str
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


# -- fetching ---------------------------------------------------------------------------------------------


def package_dir(package: str) -> Path:
    """``<data_dir>/debian/<package>``, holding the unpacked package (fetched on first use).

    Raises :class:`DataSourceError` with the commands to run when it cannot be fetched."""
    root = data_dir() / "debian" / package
    if (root / _MARKER).exists():
        return root
    if not unpack_debian(package, root):
        raise DataSourceError(
            f"could not fetch the Debian package {package}: run `apt-get download {package} && dpkg -x "
            f"{package}_*.deb {root} && touch {root / _MARKER}` on a machine whose Debian mirror answers"
        )
    (root / _MARKER).touch()
    return root


def page_files(root: Path) -> list[Path]:
    """The regular page files under ``root/usr/share/man/man*/`` (English; symbolic links are aliases)."""
    man = root / "usr" / "share" / "man"
    if not man.is_dir():
        return []
    return sorted(f for d in man.iterdir() if d.is_dir() and _SECTION_DIR.fullmatch(d.name)
                  for f in d.iterdir() if f.is_file() and not f.is_symlink())


# -- rendering and parsing --------------------------------------------------------------------------------


def read_roff(path: Path) -> str:
    """The roff source of a page file (gzipped or plain)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def is_redirect(roff: str) -> bool:
    """Whether the page is a ``.so`` redirect (its first request, after comments, is ``.so``)."""
    for line in roff.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(('.\\"', "'\\\"", '\\"', ".\\#")) or stripped == ".":
            continue
        return stripped.startswith(".so ") or stripped.startswith(".so\t")
    return False


def render(roff: str) -> list[tuple[bool, str]]:
    """The lines of a roff ``man`` page rendered by ``groff`` (see the module) as ``(is_heading, text)``:
    headings are the lines groff leaves unindented (``.SH``); spaces inside a line are collapsed, the running
    header and footer dropped, at most one blank line kept in a row. ``[]`` if it renders to nothing."""
    try:
        result = subprocess.run(GROFF, input=roff.encode(), capture_output=True, timeout=120,
                                env={**os.environ, "GROFF_NO_SGR": "1"})
    except FileNotFoundError:
        raise DataSourceError("groff is missing: run `apt-get install -y groff-base` (it renders man pages)") from None
    raw = result.stdout.decode("utf-8", errors="replace").splitlines()
    content = [i for i, line in enumerate(raw) if line.strip()]
    if len(content) < 3:  # nothing between the running header (first line) and footer (last line)
        return []
    lines: list[tuple[bool, str]] = []
    for line in raw[content[0] + 1:content[-1]]:
        text = " ".join(line.split())
        if _RULE.fullmatch(text.replace(" ", "")):
            text = ""
        if text or (lines and lines[-1][1]):
            lines.append((not line[:1].isspace() and bool(text), text))
    while lines and not lines[-1][1]:
        lines.pop()
    return lines


def split_name(lines: list[tuple[bool, str]]) -> tuple[str, str, str] | None:
    """``(names part, description, text without the NAME section)`` of :func:`render`'s lines, or ``None``
    when the page has no NAME heading or no " - " between names and description in that section (which runs
    to the next heading)."""
    start = next((i for i, (heading, text) in enumerate(lines) if heading and text.upper() == "NAME"), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines) and not lines[end][0]:
        end += 1
    name_text = " ".join(text for _, text in lines[start + 1:end] if text)
    parts = _SEPARATOR.split(name_text, maxsplit=1)
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        return None
    out: list[str] = []
    for _, text in lines[:start] + lines[end:]:
        if text or (out and out[-1]):
            out.append(text)
    return parts[0].strip(), parts[1].strip(), "\n".join(out).strip()


# -- collecting, deduplicating, grouping ------------------------------------------------------------------


def page_names(file: str, names_part: str) -> tuple[str, ...]:
    """Lower-case page names: the file's (``man3/malloc.3.gz`` -> ``malloc``) and the NAME line's."""
    base = Path(file).name
    base = base[:-3] if base.endswith(".gz") else base
    base = base.rsplit(".", 1)[0] if "." in base else base
    names = [base] + [n.strip() for n in names_part.split(",")]
    return tuple(dict.fromkeys(n.lower() for n in names if n.strip()))


def parse_page(package: str, file: str, roff: str, counts: Counter) -> Page | None:
    """One page file parsed, or ``None`` (``counts`` records why: ``redirect``, ``empty``, ``no_name``)."""
    if is_redirect(roff):
        counts["redirect"] += 1
        return None
    lines = render(roff)
    if not any(text for _, text in lines):
        counts["empty"] += 1
        return None
    parsed = split_name(lines)
    if parsed is None:
        counts["no_name"] += 1
        return None
    names_part, description, text = parsed
    if not text:
        counts["empty"] += 1
        return None
    counts["rendered"] += 1
    return Page(package, file, page_names(file, names_part), description, text)


@functools.cache
def collect_pages(packages: tuple[str, ...] = PACKAGES) -> tuple[tuple[Page, ...], dict[str, int]]:
    """All parsed pages of ``packages`` (before the length filter and deduplication) and the counts: ``files``
    (regular page files), ``redirect``, ``empty``, ``no_name``, ``rendered`` (parsed pages), per package too
    (``<package>:files`` ...). Rendering runs two ``groff`` processes at a time."""
    counts: Counter = Counter()
    jobs = []
    for package in packages:
        root = package_dir(package)
        files = page_files(root)
        if not files:
            raise DataSourceError(f"the Debian package {package} holds no manual pages under {root}; delete "
                                  f"{root} and run again")
        jobs += [(package, str(f.relative_to(root / "usr" / "share" / "man")), f) for f in files]
    notify(f"rendering {len(jobs):,} manual pages of {', '.join(packages)} with groff (first use only)")

    def work(job: tuple[str, str, Path]) -> tuple[str, Page | None, Counter]:
        package, file, path = job
        local: Counter = Counter(files=1)
        return package, parse_page(package, file, read_roff(path), local), local

    pages = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for package, page, local in pool.map(work, jobs):
            counts.update(local)
            counts.update({f"{package}:{k}": v for k, v in local.items()})
            if page is not None:
                pages.append(page)
    return tuple(pages), dict(counts)


def select_pages(pages: tuple[Page, ...] | list[Page], min_words: int = MIN_WORDS) -> tuple[list[Page], dict[str, int]]:
    """Pages with at least ``min_words`` words, each source text once (the first, in package order), and the
    counts ``short`` and ``duplicate`` of the pages dropped."""
    kept, seen, counts = [], set(), Counter(short=0, duplicate=0)
    for page in pages:
        if page.words < min_words:
            counts["short"] += 1
        elif page.text in seen:
            counts["duplicate"] += 1
        else:
            seen.add(page.text)
            kept.append(page)
    return kept, dict(counts)


def target_key(description: str) -> str:
    """A target as grouped: lower case, spaces collapsed, every number ``0`` (so the release notes "what is new
    for perl v5.30.0" / "... v5.32.0" are one group)."""
    return re.sub(r"\d+", "0", " ".join(description.lower().split()))


def page_groups(pages: list[Page], near_duplicates: bool = True) -> list[int]:
    """A group id per page (ids count from 0 in order of first appearance): pages sharing a name, a target
    (:func:`target_key`) or, with ``near_duplicates``, a near-duplicate source are one group."""
    groups = Groups(len(pages))
    owner: dict[tuple[str, str], int] = {}
    keys = [[("name", n) for n in p.names] + [("target", target_key(p.description))] for p in pages]
    if near_duplicates and pages:
        keys = [k + [("near", str(g))] for k, g in zip(keys, near_duplicate_groups([p.text for p in pages]), strict=True)]
    for i, page_keys in enumerate(keys):
        for key in page_keys:
            groups.union(i, owner.setdefault(key, i))
    return groups.ids()


def manpage_summaries() -> datasets.Dataset:
    """Columns ``source`` (page text), ``target`` (NAME description), ``group`` (see :func:`page_groups`)."""
    pages, counts = collect_pages()
    kept, dropped = select_pages(pages)
    notify(f"manual pages: {counts['files']:,} files, {counts.get('redirect', 0):,} .so redirects, "
           f"{counts.get('empty', 0):,} empty, {counts.get('no_name', 0):,} without NAME line, "
           f"{dropped['short']:,} under {MIN_WORDS} words, {dropped['duplicate']:,} duplicates; kept {len(kept):,}")
    groups = page_groups(kept)
    return datasets.Dataset.from_dict({
        "source": [p.text for p in kept], "target": [p.description for p in kept], "group": groups,
    })
