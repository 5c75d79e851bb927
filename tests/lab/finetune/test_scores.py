"""Seq2seq scores and their standard errors, against the libraries called directly (rouge-score, sacreBLEU) and
against numbers worked out by hand."""

from __future__ import annotations

import math
import statistics

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from hf_sparse.lab.finetune import scores

PREDICTIONS = ["list directory contents", "copy files", "print a line of text", "remove empty directories"]
REFERENCES = ["list directory contents", "copy files and directories", "display a line of text", "make directories"]


def test_rouge_mean_and_standard_error_are_per_document():
    """rougeL is the mean of rouge-score's per-document F-measures, rougeL_se their SD / sqrt(n) (tol 1e-12)."""
    result, library = scores.summarization_scores(PREDICTIONS, REFERENCES)
    assert library in ("rouge-score", "evaluate")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    per_document = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    # by hand (F = 2PR / (P + R) of the longest common subsequence): 1; "copy files" P 1, R 1/2 -> 2/3;
    # "a line of text" P = R = 4/5; "directories" P 1/3, R 1/2 -> 0.4
    assert per_document == pytest.approx([1.0, 2 / 3, 0.8, 0.4], abs=1e-12)
    assert result["rougeL"] == pytest.approx(statistics.fmean(per_document), abs=1e-12)
    assert result["rougeL_se"] == pytest.approx(statistics.stdev(per_document) / 2, abs=1e-12)
    assert set(result) == {"rouge1", "rouge2", "rougeL", "rouge1_se", "rouge2_se", "rougeL_se"}
    one, _ = scores.summarization_scores(PREDICTIONS[:1], REFERENCES[:1])
    assert one["rougeL"] == 1.0 and one["rougeL_se"] == 0.0  # one document: no spread to estimate


def test_bleu_and_chrf_are_corpus_scores_with_a_bootstrap_standard_error():
    """BLEU / chrF equal sacreBLEU's corpus scores (tol 1e-9); the SE is the SD over seeded resamples of the
    documents: reproducible, zero when every document is identical to its reference, and close to the spread the
    same resampling gives when recomputed here (tol 1e-9)."""
    predictions, references = PREDICTIONS * 5, REFERENCES * 5
    result, library = scores.translation_scores(predictions, references)
    assert library in ("sacrebleu", "evaluate")
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score, abs=1e-9)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score, abs=1e-9)
    again, _ = scores.translation_scores(predictions, references)
    assert again == result and result["bleu_se"] > 0 and result["chrf_se"] > 0
    import random

    rng, values = random.Random(0), []
    for _ in range(scores.BOOTSTRAP_SAMPLES):
        picks = [rng.randrange(len(predictions)) for _ in predictions]
        values.append(sacrebleu.corpus_bleu([predictions[i] for i in picks], [[references[i] for i in picks]]).score)
    assert result["bleu_se"] == pytest.approx(statistics.stdev(values), abs=1e-9)
    exact, _ = scores.translation_scores(REFERENCES * 5, REFERENCES * 5)
    assert exact["bleu"] == pytest.approx(100.0) and exact["bleu_se"] == pytest.approx(0.0, abs=1e-9)
    assert not math.isnan(scores.translation_scores(predictions[:1], references[:1])[0]["bleu_se"])
