"""ROUGE-L / ROUGE-N of ctrag.evaluation.metrics.text equal Google's rouge-score on real CT-RATE report pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrag.data.ct_rate import read_ctclip_classifier
from ctrag.errors import InvalidInputError
from ctrag.evaluation.metrics.text import rouge_l, rouge_n


@pytest.fixture(scope="module")
def pairs(ct_rate_dir: Path) -> tuple[list[str], list[str]]:
    cases = read_ctclip_classifier(ct_rate_dir, patient_level_split=False)
    val = [c.report_text for c in cases if c.split == "val"][:25]
    train = [c.report_text for c in cases if c.split == "train"][:25]
    return val, train


@pytest.mark.parametrize("stem", [True, False])
def test_equal_to_rouge_score(pairs: tuple[list[str], list[str]], stem: bool) -> None:
    from rouge_score import rouge_scorer

    refs, hyps = pairs
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge2"], use_stemmer=stem)
    expected = [scorer.score(r, h) for r, h in zip(refs, hyps, strict=True)]
    np.testing.assert_allclose(rouge_l(refs, hyps, stem=stem), [e["rougeL"].fmeasure for e in expected], atol=1e-12)
    np.testing.assert_allclose(rouge_n(refs, hyps, 2, stem=stem), [e["rouge2"].fmeasure for e in expected], atol=1e-12)


def test_hand_computed() -> None:
    # LCS("the cat sat on the mat", "the cat on a mat") = "the cat on mat" = 4 -> P 4/5, R 4/6, F 8/11
    assert rouge_l(["the cat sat on the mat"], ["the cat on a mat"], stem=False)[0] == pytest.approx(8 / 11)
    # bigrams: ref {the cat, cat sat, sat on, on the, the mat}, hyp {the cat, cat on, on a, a mat}: overlap 1
    assert rouge_n(["the cat sat on the mat"], ["the cat on a mat"], 2, stem=False)[0] == pytest.approx(
        2 * (1 / 4) * (1 / 5) / (1 / 4 + 1 / 5)
    )
    assert rouge_l(["same text"], ["same text"])[0] == 1.0
    assert rouge_l([""], ["anything"])[0] == 0.0


def test_errors() -> None:
    with pytest.raises(InvalidInputError, match="2 references but 1"):
        rouge_l(["a", "b"], ["a"])
    with pytest.raises(InvalidInputError, match="single str"):
        rouge_l("a", "b")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="n must be"):
        rouge_n(["a"], ["a"], 0)
