"""Reg2RG's metric protocol: 13a tokens, smoothed corpus BLEU worked out by hand, NLTK METEOR's exact/stem path
(no WordNet here), rouge_score on raw text, the clear error when the NLTK data is missing, and Reg2RG's own
published lung-region row recomputed from the predictions they released."""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import pytest

from ctrag.errors import InvalidInputError
from ctrag.evaluation.metric_protocols import load_nltk_data, nltk_meteor, nmt_bleu, reg2rg_scores, tokenize_13a
from ctrag.evaluation.report_metrics import ReportScores, evaluate_reports


class NoSynonyms:
    """A WordNet stand-in with no synsets: METEOR then matches exact words and Porter stems only."""

    def synsets(self, word: str) -> list[object]:
        return []


def test_13a_keeps_case_and_splits_punctuation_but_not_decimals() -> None:
    assert tokenize_13a("No effusion; 4.5-mm nodule, (RUL).") == [
        "No", "effusion", ";", "4.5", "-", "mm", "nodule", ",", "(", "RUL", ")", "."
    ]  # fmt: skip


def test_reg2rg_corpus_bleu_matches_hand_computation() -> None:
    refs = ["no pleural effusion seen.", "heart is normal"]
    hyps = ["no pleural effusion noted.", "heart normal"]
    # 13a tokens: 5+3 reference, 5+2 generated. Unigram matches 4 + 2 of 7; bigram matches 2 + 0 of 4 + 1.
    # smooth=True: p1 = (6+1)/(7+1), p2 = (2+1)/(5+1); brevity penalty exp(1 - 8/7).
    corpus, per_report, _, _ = reg2rg_scores(refs, hyps, nltk_data=None)
    bp = math.exp(1 - 8 / 7)
    assert corpus["bleu_1"] == pytest.approx(7 / 8 * bp, rel=1e-12)
    assert corpus["bleu_2"] == pytest.approx(math.sqrt(7 / 8 * 3 / 6) * bp, rel=1e-12)
    # Per report, pair 2 alone: p1 = 3/3, brevity exp(1 - 3/2); pair 1: p1 = 5/6, no penalty.
    pair1, pair2 = 5 / 6, math.exp(1 - 3 / 2)
    assert per_report["bleu_1"]["mean"] == pytest.approx((pair1 + pair2) / 2, rel=1e-12)
    assert per_report["bleu_1"]["sd"] == pytest.approx(abs(pair1 - pair2) / 2, rel=1e-12)
    assert corpus["meteor"] is None
    assert nmt_bleu([["a"]], [["b"]], max_order=1, smooth=False) == 0.0


def test_nltk_meteor_exact_and_stem_path_by_hand() -> None:
    ref = ["the", "mass", "is", "large"]
    same, other, stemmed = nltk_meteor(
        [ref, ref, ["nodules", "seen"]], [ref, ["the", "mass", "is", "big"], ["nodule", "seen"]], NoSynonyms()
    )
    # Identical: P = R = 1, one chunk of 4 matches, penalty 0.5 * (1/4)^3 (METEOR never reaches 1).
    assert same == pytest.approx(1 - 0.5 * (1 / 4) ** 3)
    # 3 of 4 words match in one chunk: Fmean = PR / (0.9 P + 0.1 R) = 0.75, penalty 0.5 * (1/3)^3.
    assert other == pytest.approx(0.75 * (1 - 0.5 * (1 / 3) ** 3))
    assert stemmed == pytest.approx(1 - 0.5 * (1 / 2) ** 3)  # "nodules"/"nodule" share the Porter stem


@pytest.fixture(scope="module")
def val_reports(ct_rate_dir: Path) -> list[str]:
    with open(ct_rate_dir / "val.csv", encoding="utf-8") as fh:
        return [row["report_text"] for row in csv.DictReader(fh)][:6]


def test_reg2rg_on_shipped_reports(val_reports: list[str]) -> None:
    shuffled = val_reports[1:] + val_reports[:1]
    same = evaluate_reports(val_reports, val_reports, meteor=False, protocol="reg2rg")
    other = evaluate_reports(val_reports, shuffled, meteor=False, protocol="reg2rg")
    assert same.protocol == "reg2rg" and same.per_report is not None
    for name in ("bleu_1", "bleu_4", "rouge_1", "rouge_2", "rouge_l"):
        assert getattr(same, name) == pytest.approx(1.0)
        assert same.per_report[name] == pytest.approx({"mean": 1.0, "sd": 0.0})
        assert getattr(other, name) < 0.9
    assert other.cider < same.cider and same.meteor is None
    # The protocols differ on the same texts (case and punctuation are tokens for reg2rg's BLEU).
    coco = evaluate_reports(val_reports, shuffled, meteor=False)
    assert coco.protocol == "coco" and coco.per_report is None and coco.bleu_4 != pytest.approx(other.bleu_4)


def test_missing_nltk_data_and_unknown_protocol_are_clear_errors(tmp_path: Path, val_reports: list[str]) -> None:
    with pytest.raises(InvalidInputError, match=r"corpora/wordnet.*punkt_tab.*--nltk-data"):
        load_nltk_data(tmp_path)
    with pytest.raises(InvalidInputError, match="not a folder"):
        load_nltk_data(tmp_path / "absent")
    with pytest.raises(InvalidInputError, match="unknown metric protocol 'bleurt'"):
        evaluate_reports(val_reports, val_reports, protocol="bleurt")


# ------------------------------------------------------------------ Reg2RG's published lung row, from its release
# sample_data/ct_rate_nc_sa/reg2rg_released/: Reg2RG's 1,514 lung-region predictions and their own score table.
PUBLISHED_COLUMNS = {
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "rouge_1": "ROUGE-1",
    "rouge_2": "ROUGE-2",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr",
}
ROUNDED = 5e-5  # their table has 4 decimals
BOOTSTRAP = 5e-4  # their Overall_ROUGE is HF evaluate's bootstrap median of the mean, ctrag gives the mean


@pytest.fixture(scope="module")
def reg2rg_release(sample_dir: Path) -> tuple[list[str], list[str], dict[str, str]]:
    folder = sample_dir / "ct_rate_nc_sa" / "reg2rg_released"
    with gzip.open(folder / "lung_reports.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(folder / "nlg_evaluation_results_all_regions.csv", encoding="utf-8", newline="") as fh:
        (lung,) = [row for row in csv.DictReader(fh) if row["region"] == "lung"]
    return [r["GT_combined_report"] for r in rows], [r["Pred_combined_report"] for r in rows], lung


def mean_sd(cell: str) -> tuple[float, float]:
    mean, sd = cell.split("±")
    return float(mean), float(sd)


@pytest.fixture(scope="module")
def reg2rg_rescored(reg2rg_release: tuple[list[str], list[str], dict[str, str]]) -> ReportScores:
    refs, hyps, _ = reg2rg_release
    return evaluate_reports(refs, hyps, protocol="reg2rg", meteor=False)


def test_reg2rg_published_lung_row_per_report_mean_and_sd(
    reg2rg_release: tuple[list[str], list[str], dict[str, str]], reg2rg_rescored: ReportScores
) -> None:
    _, _, published = reg2rg_release
    assert reg2rg_rescored.n_reports == 1514 and reg2rg_rescored.per_report is not None
    for name, column in PUBLISHED_COLUMNS.items():
        mean, sd = mean_sd(published[column])
        got = reg2rg_rescored.per_report[name]
        assert got["mean"] == pytest.approx(mean, abs=ROUNDED), name
        assert got["sd"] == pytest.approx(sd, abs=ROUNDED), name
    # METEOR (their 0.3174±0.2151) needs NLTK's WordNet, which is not shipped: absent, never a number.
    assert reg2rg_rescored.meteor is None and "meteor" not in reg2rg_rescored.per_report


def test_reg2rg_published_lung_row_corpus_scores(
    reg2rg_release: tuple[list[str], list[str], dict[str, str]], reg2rg_rescored: ReportScores
) -> None:
    refs, hyps, published = reg2rg_release
    for n in range(1, 5):
        assert getattr(reg2rg_rescored, f"bleu_{n}") == pytest.approx(
            float(published[f"Overall_BLEU-{n}"]), abs=ROUNDED
        )
    for name, column in (("rouge_1", "ROUGE-1"), ("rouge_2", "ROUGE-2"), ("rouge_l", "ROUGE-L")):
        assert getattr(reg2rg_rescored, name) == pytest.approx(float(published[f"Overall_{column}"]), abs=BOOTSTRAP)
    # The corpus BLEU check has teeth: lower-casing, or whitespace tokens instead of mteval-13a, misses the
    # published Overall_BLEU-4 (0.1096) by far more than the rounding.
    for tokens in (lambda t: tokenize_13a(t.lower()), str.split):
        other = nmt_bleu([tokens(r) for r in refs], [tokens(h) for h in hyps], max_order=4)
        assert abs(other - float(published["Overall_BLEU-4"])) > 10 * ROUNDED
