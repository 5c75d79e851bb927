"""Near-duplicate groups of texts (MinHash LSH from ``datasketch``) and splits that keep each group whole.

Texts are normalized (lower case, runs of non-word characters -> one space) and cut into word
``shingle``-grams; two texts whose estimated Jaccard similarity of those sets reaches ``threshold`` are
near-duplicates, and groups are the connected components of that relation (union-find over LSH candidate
pairs, each pair confirmed by its MinHash estimate). Splitting by group means no test text has a near-copy
in train.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_NON_WORD = re.compile(r"\W+")


def shingles(text: str, size: int = 3) -> set[bytes]:
    """Word ``size``-grams of the normalized ``text`` (the whole text if it is shorter)."""
    words = _NON_WORD.sub(" ", text.lower()).split()
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + size]).encode() for i in range(len(words) - size + 1)}


def jaccard(a: set, b: set) -> float:
    """``|a & b| / |a | b|`` (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


class Groups:
    """Items ``0 .. n-1`` merged into groups (union-find): :meth:`union` joins two items' groups, :meth:`ids`
    gives a group id per item, counting from 0 in order of first appearance."""

    def __init__(self, n: int) -> None:
        self._parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self._parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self._parent[max(a, b)] = min(a, b)

    def ids(self) -> list[int]:
        roots: dict[int, int] = {}
        return [roots.setdefault(self.find(i), len(roots)) for i in range(len(self._parent))]


def near_duplicate_groups(
    texts: Sequence[str], *, threshold: float = 0.7, num_perm: int = 128, shingle: int = 3, seed: int = 1
) -> list[int]:
    """A group id per text: texts in one group are (chains of) near-duplicates; ids count from 0 in order
    of first appearance. Exact duplicates (after normalization) always share a group.

    Candidates come from an LSH index tuned below ``threshold`` (``threshold - 0.2``, for recall); each
    candidate pair is confirmed with the exact Jaccard similarity of the two shingle sets."""
    from datasketch import MinHash, MinHashLSH

    sets_of = Groups(len(texts))
    union = sets_of.union

    exact: dict[str, int] = {}
    unique: list[int] = []
    for i, text in enumerate(texts):
        key = _NON_WORD.sub(" ", text.lower()).strip()
        if key in exact:
            union(exact[key], i)
        else:
            exact[key] = i
            unique.append(i)
    sets = {i: shingles(texts[i], shingle) for i in unique}
    hashes = MinHash.bulk([sets[i] for i in unique], num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(threshold=max(0.1, threshold - 0.2), num_perm=num_perm)
    for i, minhash in zip(unique, hashes, strict=True):
        for j in lsh.query(minhash):
            if jaccard(sets[i], sets[j]) >= threshold:
                union(i, j)
        lsh.insert(i, minhash, check_duplication=False)
    return sets_of.ids()


def group_split(
    groups: Sequence[int], sizes: dict[str, float | int], *, seed: int
) -> dict[str, np.ndarray]:
    """Row indices of each split in ``sizes`` (fractions of all rows, or row counts; the rest goes to
    ``"train"``), assigning whole groups: groups are shuffled (seeded) and dealt out until each split holds
    its share. Returns ``{"train": idx, <split>: idx, ...}``, each sorted."""
    groups = np.asarray(groups)
    total = len(groups)
    order = np.random.default_rng(seed).permutation(int(groups.max()) + 1 if total else 0)
    members: dict[int, list[int]] = {}
    for row, group in enumerate(groups.tolist()):
        members.setdefault(group, []).append(row)
    out: dict[str, list[int]] = {name: [] for name in sizes}
    targets = {name: (size if isinstance(size, int) else round(size * total)) for name, size in sizes.items()}
    remaining = list(order)
    for name in sizes:
        while remaining and len(out[name]) < targets[name]:
            out[name].extend(members.get(int(remaining.pop()), []))
    out["train"] = [row for group in remaining for row in members.get(int(group), [])]
    return {name: np.sort(np.asarray(rows, dtype=np.int64)) for name, rows in out.items()}
