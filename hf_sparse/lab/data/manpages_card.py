"""The numbers of docs/data/manpages.md: ``python -m hf_sparse.lab.data.manpages_card [seed]`` (apart from
:mod:`.manpages`, which :mod:`.summarization` imports, so that measuring through the summarization builder makes
no import cycle)."""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np

from .manpages import MIN_WORDS, PACKAGES, SOURCE, collect_pages, page_groups, select_pages
from .summarization import build_summarization


def _quartiles(values: list[int]) -> list[int]:
    return [int(v) for v in np.percentile(values, [0, 25, 50, 75, 100], method="nearest")] if values else []


def measure(seed: int = 0) -> dict:
    """Everything docs/data/manpages.md reports: page counts, and per split the rows, MiniLM token quartiles of
    the sources (``[CLS]`` / ``[SEP]`` included; min / Q1 / median / Q3 / max), how many exceed 1,024 and 4,096
    tokens, target word quartiles, and the page names / targets found in two splits (0 by construction)."""
    from transformers import AutoTokenizer

    from ..models import minilm_path

    pages, counts = collect_pages()
    kept, dropped = select_pages(pages)
    dd = build_summarization(SOURCE, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    by_text = {p.text: p for p in kept}
    out: dict = {"packages": {p: {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith(p + ":")}
                              for p in PACKAGES},
                 "counts": {**{k: v for k, v in counts.items() if ":" not in k}, **dropped, "kept": len(kept),
                            "groups": len(set(page_groups(kept)))},
                 "min_words": MIN_WORDS, "splits": {}}
    owner: dict[str, set[str]] = {}
    for split, ds in dd.items():
        lengths = [len(ids) for ids in tokenizer(list(ds["source"]), verbose=False)["input_ids"]]
        out["splits"][split] = {
            "rows": len(ds), "tokens": _quartiles(lengths),
            "over_1024": sum(n > 1024 for n in lengths), "over_4096": sum(n > 4096 for n in lengths),
            "target_words": _quartiles([len(t.split()) for t in ds["target"]]),
            "packages": dict(Counter(by_text[t].package for t in ds["source"]).most_common()),
        }
        for text in ds["source"]:
            for key in (*by_text[text].names, by_text[text].description.lower()):
                owner.setdefault(key, set()).add(split)
    out["keys_in_two_splits"] = sum(len(s) > 1 for s in owner.values())
    return out


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 0), indent=1))
