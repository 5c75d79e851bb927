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


def translation_scores(predictions: Sequence[str], references: Sequence[str]) -> tuple[dict[str, float], str]:
    """``({"bleu": .., "chrf": ..}, library)``: corpus BLEU and chrF (0-100, sacreBLEU's defaults: 13a
    tokenization, one reference each); ``library`` is ``"evaluate"`` or ``"sacrebleu"``."""
    refs = [[r] for r in references]
    modules = _evaluate_modules(("sacrebleu", "chrf"))
    if modules is not None:
        bleu, chrf = modules
        return {"bleu": float(bleu.compute(predictions=list(predictions), references=refs)["score"]),
                "chrf": float(chrf.compute(predictions=list(predictions), references=refs)["score"])}, "evaluate"
    import sacrebleu

    streams = [list(references)]
    return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), streams).score),
            "chrf": float(sacrebleu.corpus_chrf(list(predictions), streams).score)}, "sacrebleu"


def summarization_scores(predictions: Sequence[str], references: Sequence[str]) -> tuple[dict[str, float], str]:
    """``({"rouge1", "rouge2", "rougeL"}, library)``: mean F-measures (0-1) with Porter stemming, as
    ``evaluate``'s ``rouge`` computes them; ``library`` is ``"evaluate"`` or ``"rouge-score"``."""
    keys = ("rouge1", "rouge2", "rougeL")
    modules = _evaluate_modules(("rouge",))
    if modules is not None:
        result = modules[0].compute(predictions=list(predictions), references=list(references), rouge_types=list(keys),
                                    use_stemmer=True)
        return {k: float(result[k]) for k in keys}, "evaluate"
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for k in keys:
            totals[k] += scores[k].fmeasure
    count = max(1, len(predictions))
    return {k: totals[k] / count for k in keys}, "rouge-score"
