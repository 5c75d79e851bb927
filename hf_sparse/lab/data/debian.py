"""Debian's package-description translations (``Translation-<lang>`` index files) as parallel text.

Every Debian package description has a one-line *synopsis* and a *long description* (indented lines; a
line holding only ``.`` is a paragraph break). The ``Translation-en`` index holds the English originals,
``Translation-de`` / ``Translation-fr`` the translations made by Debian's translators (DDTP); records are
keyed by ``Description-md5``, the MD5 of the English description, so joining on it pairs each translation
with its original.

The index files are fetched with a private ``apt-get update`` whose lists live under the cache folder
(``<data_dir>/debian/translation-lists``; no root needed): the system's package lists and caches are left
alone. apt keeps
them compressed; ``/usr/lib/apt/apt-helper cat-file`` decompresses whatever format apt chose.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from .common import DataSourceError, data_dir, last_line, notify

LANGUAGES = ("en", "de", "fr")
_APT_HELPER = "/usr/lib/apt/apt-helper"


@dataclass(frozen=True)
class Description:
    """One description of one index file.

    Attributes:
        package: the package it describes (the first one, when several share the description).
        md5: ``Description-md5``, the key shared by the English original and its translations.
        synopsis: the one-line short description.
        paragraphs: the long description's paragraphs, each with its lines joined by spaces.
    """

    package: str
    md5: str
    synopsis: str
    paragraphs: tuple[str, ...]

    @property
    def long(self) -> str:
        """The long description, paragraphs separated by a blank line (``""`` if it has none)."""
        return "\n\n".join(self.paragraphs)


def lists_dir() -> Path:
    """Where the private ``apt-get update`` keeps its index files."""
    return data_dir() / "debian" / "translation-lists"


def index_files(language: str) -> list[Path]:
    """The ``Translation-<language>`` index files (one per suite and component), fetched on first use.

    Raises :class:`DataSourceError` with the command to run when they cannot be fetched (no apt, no
    mirror)."""
    if language not in LANGUAGES:
        raise DataSourceError(f"no Debian translation index for language {language!r}; choose one of: {', '.join(LANGUAGES)}")
    folder = lists_dir()
    found = sorted(folder.glob(f"*_i18n_Translation-{language}*"))
    if found and all(any(folder.glob(f"*_i18n_Translation-{lang}*")) for lang in LANGUAGES):
        return found
    _apt_update(folder)
    found = sorted(folder.glob(f"*_i18n_Translation-{language}*"))
    if not found:
        raise DataSourceError(f"apt-get update put no Translation-{language} index into {folder}; check the apt sources")
    return found


def apt_update_command(folder: Path) -> list[str]:
    """``apt-get update`` into ``folder`` only: the system lists, package caches and sources stay untouched,
    and only the description translations are fetched (no ``Packages`` indexes)."""
    return [
        "apt-get", "update", "-q",
        "-o", f"Dir::State::Lists={folder}",
        "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
        "-o", f"Acquire::Languages={','.join(LANGUAGES)}",
        "-o", "Acquire::IndexTargets::deb::Packages::DefaultEnabled=false",
        "-o", "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false",
    ]


def _apt_update(folder: Path) -> None:
    command = apt_update_command(folder)
    hint = f"run `{' '.join(command)}` on a machine whose Debian mirror answers"
    (folder / "partial").mkdir(parents=True, exist_ok=True)
    notify(f"fetching Debian's Translation-{{{','.join(LANGUAGES)}}} indexes into {folder} (first use only)")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        raise DataSourceError(f"apt-get update failed ({type(exc).__name__}); {hint}") from None
    if result.returncode != 0:
        raise DataSourceError(f"apt-get update failed ({last_line(result.stderr)}); {hint}")


def read_index(path: Path) -> str:
    """The decompressed text of one index file (apt stores them ``.lz4`` / ``.gz`` / ``.xz`` / plain)."""
    try:
        result = subprocess.run([_APT_HELPER, "cat-file", str(path)], capture_output=True, timeout=300)
    except FileNotFoundError:
        raise DataSourceError(f"{_APT_HELPER} is missing (it comes with apt); cannot decompress {path}") from None
    if result.returncode != 0:
        raise DataSourceError(f"apt-helper cat-file {path} failed: {last_line(result.stderr.decode(errors='replace'))}")
    return result.stdout.decode("utf-8", errors="replace")


def parse_index(text: str, language: str) -> list[Description]:
    """The descriptions of one ``Translation-<language>`` index (RFC 822 style stanzas).

    A continuation line starts with a space; ``" ."`` is a paragraph break; lines indented further are
    kept as text (verbatim layout is not preserved)."""
    field = f"Description-{language}"
    out = []
    for stanza in text.split("\n\n"):
        package = md5 = synopsis = None
        paragraphs: list[list[str]] = [[]]
        in_description = False
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")):
                if not in_description:
                    continue
                body = line.strip()
                if body == ".":
                    paragraphs.append([])
                elif body:
                    paragraphs[-1].append(body)
                continue
            key, _, value = line.partition(":")
            in_description = key == field
            if key == "Package":
                package = value.strip()
            elif key == "Description-md5":
                md5 = value.strip()
            elif in_description:
                synopsis = value.strip()
        if package and md5 and synopsis:
            kept = tuple(" ".join(p) for p in paragraphs if p)
            out.append(Description(package, md5, synopsis, kept))
    return out


def descriptions(language: str) -> dict[str, Description]:
    """``{Description-md5: Description}`` over all ``Translation-<language>`` indexes (first one wins)."""
    merged: dict[str, Description] = {}
    for path in index_files(language):
        for item in parse_index(read_index(path), language):
            merged.setdefault(item.md5, item)
    return merged
