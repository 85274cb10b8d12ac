"""Report metrics on real CT-RATE report text: hand-computed BLEU/ROUGE, pycocoevalcap agreement, METEOR, CE."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from ctrag.evaluation.report_metrics import (
    clinical_efficacy,
    coco_scores,
    evaluate_reports,
    fit_label_extractor,
    label_extractor_quality,
    meteor_available,
    meteor_score,
    rouge_n_scores,
    tokenize,
)

REF = "There is a nodule in the right upper lobe."
HYP = "A nodule is seen in the right lung."


def test_tokenize_keeps_decimals_and_drops_punctuation() -> None:
    assert tokenize("Nodule, 4.5 mm; non-calcified.") == "nodule 4.5 mm non-calcified"


def test_bleu1_and_rouge_l_match_hand_computation() -> None:
    # Tokens: ref = there is a nodule in the right upper lobe (9); hyp = a nodule is seen in the right lung (8).
    # Unigram matches (clipped): a, nodule, is, in, the, right = 6 of 8; brevity penalty exp(1 - 9/8).
    s = coco_scores([REF], [HYP])
    assert s["bleu_1"] == pytest.approx(6 / 8 * math.exp(1 - 9 / 8), rel=1e-6)
    # LCS = "a nodule in the right" (5) or "is ... in the right": 5 tokens. P = 5/8, R = 5/9, beta = 1.2.
    p, r, beta = 5 / 8, 5 / 9, 1.2
    assert s["rouge_l"] == pytest.approx((1 + beta**2) * p * r / (r + beta**2 * p), rel=1e-6)


def test_scores_agree_with_pycocoevalcap_called_directly() -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    refs = [REF, "No pleural effusion. Heart size is normal."]
    hyps = [HYP, "Heart size is normal without pleural effusion."]
    gts = {i: [tokenize(t)] for i, t in enumerate(refs)}
    res = {i: [tokenize(t)] for i, t in enumerate(hyps)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    ours = coco_scores(refs, hyps)
    assert [ours[f"bleu_{n}"] for n in (1, 2, 3, 4)] == pytest.approx(list(bleu))
    assert ours["rouge_l"] == pytest.approx(rouge)
    assert rouge_n_scores([REF], [REF]) == {"rouge_1": 1.0, "rouge_2": 1.0}


@pytest.fixture(scope="module")
def ct_rate_pairs(ct_rate_dir: Path) -> tuple[list[str], list[str]]:
    """Real CT-RATE validation reports paired with other real reports (a mismatched pairing)."""
    with open(ct_rate_dir / "val.csv", encoding="utf-8") as fh:
        texts = [row["report_text"] for row in csv.DictReader(fh)][:6]
    return texts, texts[1:] + texts[:1]


def test_identical_reports_beat_mismatched_ones(ct_rate_pairs: tuple[list[str], list[str]]) -> None:
    refs, shuffled = ct_rate_pairs
    same = evaluate_reports(refs, refs, meteor=False)
    other = evaluate_reports(refs, shuffled, meteor=False)
    assert same.bleu_4 == pytest.approx(1.0) and same.rouge_l == pytest.approx(1.0)
    for name in ("bleu_1", "bleu_4", "rouge_1", "rouge_2", "rouge_l", "cider"):
        assert getattr(other, name) < getattr(same, name)
    assert same.meteor is None and "disabled" in same.notes["meteor"]


def test_meteor_runs_with_bundled_wordnet_synonyms() -> None:
    ok, why = meteor_available()
    assert ok, why  # Java 17 is on this machine; the jar carries WordNet synsets
    # One jar start for all pairs (loading its tables is the slow part).
    corpus, (exact, synonym, unrelated) = meteor_score(
        ["the heart is enlarged", "the mass is large", "the mass is large"],
        ["the heart is enlarged", "the mass is big", "the mass is green"],
    )
    assert exact > synonym > unrelated  # "big"/"large" match through WordNet synsets, "green" does not
    assert unrelated < corpus < exact


def test_clinical_efficacy_micro_and_macro() -> None:
    ref = np.zeros((3, 18), dtype=int)
    hyp = np.zeros((3, 18), dtype=int)
    ref[0, 0] = ref[1, 0] = ref[2, 5] = 1
    hyp[0, 0] = hyp[2, 0] = hyp[2, 5] = 1  # TP 2 (0:0, 2:5), FP 1 (2:0), FN 1 (1:0)
    ce = clinical_efficacy(ref, hyp)
    assert ce["precision_micro"] == pytest.approx(2 / 3)
    assert ce["recall_micro"] == pytest.approx(2 / 3)
    # label 0: P 1/2, R 1/2, F1 1/2; label 5: 1, 1, 1 → macro over the 2 labels present.
    assert ce["f1_macro"] == pytest.approx(0.75)
    assert ce["n_labels_macro"] == 2


def test_label_extractor_feeds_clinical_efficacy() -> None:
    class KeywordLabels:
        """Stand-in extractor: flags label 9 ("Lung nodule") when the word appears."""

        def predict_proba(self, texts):
            out = np.zeros((len(texts), 18))
            out[:, 9] = [float("nodule" in t.lower()) for t in texts]
            return out

    scores = evaluate_reports([REF, "No effusion."], [HYP, "A nodule."], label_extractor=KeywordLabels(), meteor=False)
    assert scores.clinical_efficacy is not None
    assert scores.clinical_efficacy["precision_micro"] == pytest.approx(0.5)
    assert scores.clinical_efficacy["recall_micro"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def label_model(ct_rate_dir: Path):
    """The project's label extractor (ctrag.labels.LabelExtractor) fitted on the shipped CT-RATE train reports."""
    return fit_label_extractor(ct_rate_dir / "train.csv")


def test_label_extractor_quality_on_held_out_ct_rate_reports(label_model, ct_rate_dir: Path) -> None:
    q = label_extractor_quality(label_model, ct_rate_dir / "val.csv")
    assert q["n_reports"] == 100
    assert q["macro_auc"] > 0.95 and q["macro_f1"] > 0.85 and q["micro_f1"] > 0.85


def test_clinical_efficacy_with_the_real_label_model(label_model, ct_rate_pairs) -> None:
    refs, shuffled = ct_rate_pairs
    same = evaluate_reports(refs, refs, label_extractor=label_model, meteor=False).clinical_efficacy
    other = evaluate_reports(refs, shuffled, label_extractor=label_model, meteor=False).clinical_efficacy
    assert same is not None and other is not None
    assert same["f1_micro"] == pytest.approx(1.0)
    assert other["f1_micro"] < same["f1_micro"]


def test_adarag_protocol_scores_lower_cased_raw_text(ct_rate_dir) -> None:
    """AdaRAG-CT's protocol: pycocoevalcap on stripped, lower-cased raw text (punctuation stays on the words),
    not ctrag's alphanumeric tokens; an empty report scores as an empty string instead of failing."""
    import contextlib
    import csv
    import io

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from ctrag.evaluation.report_bootstrap import corpus_values

    with open(ct_rate_dir / "val.csv", encoding="utf-8") as fh:
        refs = [row["report_text"] for row in csv.DictReader(fh)][:6]
    hyps = [refs[(i + 1) % 6] for i in range(5)] + ["   "]
    gts = {i: [r.strip().lower()] for i, r in enumerate(refs)}
    res = {i: [h.strip().lower()] for i, h in enumerate(hyps)}
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
        rouge_l, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    ours = evaluate_reports(refs, hyps, meteor=False, protocol="adarag")
    assert ours.protocol == "adarag" and "rouge_1_2" in ours.notes
    assert [ours.bleu_1, ours.bleu_2, ours.bleu_3, ours.bleu_4] == pytest.approx(list(bleu), rel=1e-12)
    assert ours.rouge_l == pytest.approx(rouge_l, rel=1e-12) and ours.cider == pytest.approx(cider, rel=1e-12)
    coco = evaluate_reports(refs, hyps, meteor=False, protocol="coco")
    assert abs(coco.bleu_4 - ours.bleu_4) > 1e-3  # the tokenization is what differs
    assert ours.statistics is not None
    full = corpus_values(ours.statistics, np.ones((1, len(refs))))
    assert float(full["bleu_4"][0]) == pytest.approx(ours.bleu_4, rel=1e-9)
