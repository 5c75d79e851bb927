"""Task metrics from well-kept libraries: Hugging Face ``evaluate`` when its metric modules load (they come
from the Hub), else the library the metric wraps (scikit-learn for accuracy / F1). Never hand-written.

Seq2seq scores come with their standard errors (``<metric>_se``, same scale as the metric): ROUGE is a mean of
per-document F-measures, so its SE is their sample standard deviation / sqrt(n); BLEU and chrF are corpus-level,
so theirs is the standard deviation of the corpus score over :data:`BOOTSTRAP_SAMPLES` resamples of the
documents (seeded, so a run's record is reproducible)."""

from __future__ import annotations

import functools
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

#: Resamples of the test documents behind a corpus-level score's standard error.
BOOTSTRAP_SAMPLES = 200


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
    """``({"bleu", "chrf", "bleu_se", "chrf_se"}, library)``: corpus BLEU and chrF (0-100, sacreBLEU's defaults:
    13a tokenization, one reference each) and their bootstrap standard errors; ``library`` is ``"evaluate"`` or
    ``"sacrebleu"``."""
    modules = _evaluate_modules(("sacrebleu", "chrf"))
    if modules is not None:
        scorers = {name: functools.partial(_evaluate_corpus, module) for name, module in zip(("bleu", "chrf"), modules,
                                                                                             strict=True)}
        library = "evaluate"
    else:
        import sacrebleu

        scorers = {"bleu": lambda hyps, refs: sacrebleu.corpus_bleu(hyps, [refs]).score,
                   "chrf": lambda hyps, refs: sacrebleu.corpus_chrf(hyps, [refs]).score}
        library = "sacrebleu"
    scores = {}
    for name, scorer in scorers.items():
        scores[name] = float(scorer(list(predictions), list(references)))
        scores[f"{name}_se"] = _bootstrap_se(scorer, predictions, references)
    return scores, library


def _evaluate_corpus(module: Any, predictions: list[str], references: list[str]) -> float:
    return module.compute(predictions=predictions, references=[[r] for r in references])["score"]


def _bootstrap_se(scorer: Callable[[list[str], list[str]], float], predictions: Sequence[str],
                  references: Sequence[str]) -> float:
    """Standard deviation of ``scorer`` over :data:`BOOTSTRAP_SAMPLES` resamples (with replacement) of the
    (prediction, reference) pairs; 0.0 for fewer than two pairs."""
    if len(predictions) < 2:
        return 0.0
    rng = random.Random(0)
    values = []
    for _ in range(BOOTSTRAP_SAMPLES):
        picks = [rng.randrange(len(predictions)) for _ in predictions]
        values.append(float(scorer([predictions[i] for i in picks], [references[i] for i in picks])))
    return statistics.stdev(values)


def summarization_scores(predictions: Sequence[str], references: Sequence[str]) -> tuple[dict[str, float], str]:
    """``({"rouge1", "rouge2", "rougeL", "rouge1_se", "rouge2_se", "rougeL_se"}, library)``: mean F-measures
    (0-1) over the documents with Porter stemming, as ``evaluate``'s ``rouge`` computes them per document, and
    their standard errors; ``library`` is ``"evaluate"`` or ``"rouge-score"``."""
    keys = ("rouge1", "rouge2", "rougeL")
    modules = _evaluate_modules(("rouge",))
    if modules is not None:
        result = modules[0].compute(predictions=list(predictions), references=list(references), rouge_types=list(keys),
                                    use_stemmer=True, use_aggregator=False)
        per_document, library = {k: [float(v) for v in result[k]] for k in keys}, "evaluate"
    else:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
        rows = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references, strict=True)]
        per_document, library = {k: [row[k].fmeasure for row in rows] for k in keys}, "rouge-score"
    scores = {}
    for k, values in per_document.items():
        scores[k] = statistics.fmean(values) if values else 0.0
        scores[f"{k}_se"] = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return scores, library
