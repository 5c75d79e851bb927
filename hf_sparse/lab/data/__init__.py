"""Dataset builders returning ``datasets.DatasetDict`` with ``train`` / ``validation`` / ``test`` splits.

One module per task family (:mod:`.sentiment`, :mod:`.image`, :mod:`.translation`, :mod:`.summarization`;
the last two share :mod:`.pairs`, :mod:`.debian` and :mod:`.dedup`); :mod:`.common` holds what they share (cache
folder, offline sources fetched through the package registries, source resolution, seeded splits). Data is
cached under ``$HF_SPARSE_DATA`` or ``./data`` (git-ignored).
"""

from .common import DataSourceError, data_dir, limit_splits, make_splits, resolve_source, source_of
from .image import build_image
from .sentiment import build_sentiment
from .summarization import build_summarization
from .translation import build_translation

__all__ = [
    "DataSourceError", "build_image", "build_sentiment", "build_summarization", "build_translation", "data_dir",
    "limit_splits", "make_splits", "resolve_source", "source_of",
]
