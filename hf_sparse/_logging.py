"""The package logger and a log-once helper (a choice made per call must not flood the log)."""

from __future__ import annotations

import logging

logger = logging.getLogger("hf_sparse")
_seen: set[str] = set()


def log_once(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time it is seen in this process."""
    if message not in _seen:
        _seen.add(message)
        logger.log(level, message)
