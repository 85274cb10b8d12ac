"""Report bootstrap: resampled corpus metrics equal the scorers' own on the resampled corpus (real CT-RATE reports),
paired differences behave, and too few reports give no interval rather than a fake one."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest

from ctrag.errors import InvalidInputError
from ctrag.evaluation.metric_protocols import reg2rg_scores
from ctrag.evaluation.report_bootstrap import bootstrap_report_metrics, corpus_values
from ctrag.evaluation.report_metrics import (
    clinical_efficacy,
    coco_scores,
    coco_statistics,
    evaluate_reports,
    rouge_n_scores,
)


@pytest.fixture(scope="module")
def report_pairs(ct_rate_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """30 val references, random train reports as one method, half exact copies as a better one."""
    with open(ct_rate_dir / "val.csv", encoding="utf-8") as fh:
        refs = [row["report_text"] for row in csv.DictReader(fh)][:30]
    with open(ct_rate_dir / "train.csv", encoding="utf-8") as fh:
        train = [row["report_text"] for row in csv.DictReader(fh)]
    rng = random.Random(0)
    poor = [rng.choice(train) for _ in refs]
    better = [r if i % 2 == 0 else p for i, (r, p) in enumerate(zip(refs, poor, strict=True))]
    return refs, poor, better


def _labels(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 18)) < 0.2).astype(int)


def test_full_corpus_weights_reproduce_the_coco_scorers(report_pairs) -> None:
    refs, poor, _ = report_pairs
    stats = coco_statistics(refs, poor)
    full = {k: float(v[0]) for k, v in corpus_values(stats, np.ones((1, len(refs)))).items()}
    expected = {**coco_scores(refs, poor), **rouge_n_scores(refs, poor)}  # the scorers run themselves
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_1", "rouge_2", "rouge_l", "cider"):
        assert full[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
    scored = evaluate_reports(refs, poor, meteor=False)  # which takes its corpus figures from the statistics
    assert [scored.bleu_4, scored.rouge_l, scored.cider] == pytest.approx(
        [expected["bleu_4"], expected["rouge_l"], expected["cider"]], rel=1e-9
    )


def test_a_resample_scores_as_the_scorer_scores_the_resampled_corpus(report_pairs) -> None:
    """Duplicated and missing reports: weights of a draw == pycocoevalcap / sklearn on the drawn lists."""
    refs, poor, _ = report_pairs
    drawn = np.random.default_rng(3).integers(0, len(refs), size=len(refs))
    weights = np.bincount(drawn, minlength=len(refs))[None, :].astype(float)
    ref_lab, hyp_lab = _labels(len(refs), 1), _labels(len(refs), 2)
    stats = coco_statistics(refs, poor).with_labels(ref_lab, hyp_lab)
    got = {k: float(v[0]) for k, v in corpus_values(stats, weights).items()}
    expected = coco_scores([refs[i] for i in drawn], [poor[i] for i in drawn])
    for n in range(1, 5):
        assert got[f"bleu_{n}"] == pytest.approx(expected[f"bleu_{n}"], rel=1e-9)
    ce = clinical_efficacy(ref_lab[drawn], hyp_lab[drawn])
    for key in ("precision_micro", "recall_micro", "f1_micro", "precision_macro", "recall_macro", "f1_macro"):
        assert got[f"ce_{key}"] == pytest.approx(ce[key], rel=1e-9), key


def test_reg2rg_statistics_reproduce_its_corpus_bleu(report_pairs) -> None:
    refs, poor, _ = report_pairs
    corpus, _, _, stats = reg2rg_scores(refs, poor, nltk_data=None)
    full = corpus_values(stats, np.ones((1, len(refs))))
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_1", "rouge_2", "rouge_l", "cider"):
        assert float(full[key][0]) == pytest.approx(corpus[key], rel=1e-9), key


def test_intervals_cover_the_point_and_paired_differences_separate_methods(report_pairs) -> None:
    refs, poor, better = report_pairs
    stats = {"poor": coco_statistics(refs, poor), "better": coco_statistics(refs, better)}
    stats["poor_again"] = coco_statistics(refs, poor)
    out = bootstrap_report_metrics(stats, n_resamples=400, seed=1, reference="poor")
    for name in stats:
        for key in ("bleu_4", "rouge_l"):
            lo, hi = out["ci"][name][key]
            assert lo < out["point"][name][key] < hi
    gain = out["difference"]["better"]["bleu_4"]
    assert gain["value"] > 0 and gain["excludes_zero"] and gain["ci"][0] > 0
    same = out["difference"]["poor_again"]["rouge_l"]
    assert same["value"] == 0.0 and same["ci"] == [0.0, 0.0] and not same["excludes_zero"]
    assert "poor" not in out["difference"]
    # one plan for all methods: the same seed gives the same intervals, another seed other ones
    again = bootstrap_report_metrics(stats, n_resamples=400, seed=1, reference="poor")
    other = bootstrap_report_metrics(stats, n_resamples=400, seed=2, reference="poor")
    assert again["ci"] == out["ci"] and other["ci"] != out["ci"]
    assert "cider" in out["approximate"]


def test_too_few_reports_or_mismatched_methods(report_pairs) -> None:
    refs, poor, _ = report_pairs
    one = bootstrap_report_metrics({"m": coco_statistics(refs[:1], poor[:1])}, n_resamples=100)
    assert one["ci"] == {} and one["skipped"] == "fewer than two reports"
    assert one["point"]["m"]["bleu_1"] == pytest.approx(coco_scores(refs[:1], poor[:1])["bleu_1"])
    with pytest.raises(InvalidInputError, match="different numbers"):
        bootstrap_report_metrics({"a": coco_statistics(refs[:3], poor[:3]), "b": coco_statistics(refs[:4], poor[:4])})
    with pytest.raises(InvalidInputError, match="reference method"):
        bootstrap_report_metrics({"a": coco_statistics(refs[:3], poor[:3])}, reference="b")
    with pytest.raises(InvalidInputError, match="label matrices"):
        coco_statistics(refs[:3], poor[:3]).with_labels(_labels(2, 0), _labels(2, 1))
