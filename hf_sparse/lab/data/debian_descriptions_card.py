"""The numbers of docs/data/debian_descriptions.md: ``python -m hf_sparse.lab.data.debian_descriptions_card [seed]``.

For each ``offline:debian_descriptions_<source>_<target>`` translation source: the pairs kept and dropped (and
why, :func:`.translation.debian_pairs`), the near-duplicate groups, and per split the rows and the median / 90th
percentile / maximum MiniLM tokens (``[CLS]`` / ``[SEP]`` included) and words of the sources and targets."""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np

from .dedup import near_duplicate_groups
from .translation import WHOLE_DESCRIPTIONS, build_translation, debian_pairs


def _stats(values: list[int]) -> dict[str, int]:
    """``{"median", "p90", "max"}`` of ``values`` (nearest-rank percentiles)."""
    median, p90 = (int(v) for v in np.percentile(values, [50, 90], method="nearest"))
    return {"median": median, "p90": p90, "max": int(max(values))}


def measure(seed: int = 0) -> dict:
    """Everything docs/data/debian_descriptions.md reports, per offline name: ``counts`` (translations, kept,
    dropped per reason), ``groups`` (near-duplicate groups: how many, how many hold one pair, the largest's
    size) and ``splits``: per split the ``rows`` and ``source_tokens`` / ``target_tokens`` / ``source_words`` / ``target_words``
    statistics (:func:`_stats`)."""
    from transformers import AutoTokenizer

    from ..models import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    out: dict = {"seed": seed, "tokenizer": str(minilm_path())}
    for name, languages in WHOLE_DESCRIPTIONS.items():
        sources, _, counts = debian_pairs(*languages, whole=True)
        sizes = Counter(near_duplicate_groups(sources)).values()  # the groups the build deals out (deterministic)
        dd = build_translation(f"offline:{name}", seed=seed)
        entry: dict = {"counts": dict(counts), "splits": {},
                       "groups": {"all": len(sizes), "single": sum(n == 1 for n in sizes), "largest": max(sizes)}}
        for split, ds in dd.items():
            row: dict = {"rows": len(ds)}
            for column in ("source", "target"):
                texts = list(ds[column])
                ids = tokenizer(texts, verbose=False)["input_ids"]
                row[f"{column}_tokens"] = _stats([len(i) for i in ids])
                row[f"{column}_words"] = _stats([len(t.split()) for t in texts])
            entry["splits"][split] = row
        out[name] = entry
    return out


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 0), indent=1))
