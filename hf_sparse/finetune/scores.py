"""Task metrics from well-kept libraries: Hugging Face ``evaluate`` when its metric modules load (they come
from the Hub), else the library the metric wraps (scikit-learn for accuracy / F1). Never hand-written."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any


@functools.cache
def _evaluate_modules(names: tuple[str, ...]) -> tuple[Any, ...] | None:
    """The ``evaluate`` metric modules, or ``None`` if any cannot be loaded (offline: they live on the Hub)."""
    try:
        import evaluate

        return tuple(evaluate.load(name) for name in names)
    except Exception:  # noqa: BLE001 - offline / hub errors of any kind mean "use the wrapped library"
        return None


def classification_scores(
    predictions: Sequence[int], references: Sequence[int], num_labels: int
) -> tuple[dict[str, float], str]:
    """``({"accuracy": .., "f1": ..}, library)``: F1 is binary (positive class 1) for two labels, macro-averaged
    over classes otherwise; ``library`` is ``"evaluate"`` or ``"scikit-learn"``."""
    average = "binary" if num_labels == 2 else "macro"
    modules = _evaluate_modules(("accuracy", "f1"))
    if modules is not None:
        accuracy, f1 = modules
        acc = accuracy.compute(predictions=predictions, references=references)["accuracy"]
        f1_value = f1.compute(predictions=predictions, references=references, average=average)["f1"]
        return {"accuracy": float(acc), "f1": float(f1_value)}, "evaluate"
    from sklearn.metrics import accuracy_score, f1_score

    acc = accuracy_score(references, predictions)
    f1_value = f1_score(references, predictions, average=average, labels=list(range(num_labels)), zero_division=0)
    return {"accuracy": float(acc), "f1": float(f1_value)}, "scikit-learn"
