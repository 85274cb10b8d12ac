"""Report parsing on real CT-RATE reports (CT-CLIP classifier CSVs) and on targeted sentences."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from ctrag.data.case import Case
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.reports import (
    ORGANS,
    THORACIC_ORGANS,
    ParsedReport,
    assign_organs,
    clean_section,
    is_abnormal,
    organ_of,
    organ_sentences,
    parse_joined_report,
    parse_report,
    split_joined_report,
    split_sentences,
)


def _rows(ct_rate_dir: Path, name: str) -> list[dict[str, str]]:
    with open(ct_rate_dir / name, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def parsed_train(ct_rate_dir: Path) -> tuple[list[dict[str, str]], list[ParsedReport]]:
    rows = _rows(ct_rate_dir, "train.csv")
    return rows, [parse_joined_report(r["report_text"]) for r in rows]


def _flag_metrics(
    rows: list[dict[str, str]], parsed: list[ParsedReport], organs: tuple[str, ...] | None
) -> dict[str, float]:
    truth = np.array([any(r[label] == "1" for label in CT_RATE_LABELS) for r in rows])
    pred = np.array([p.abnormal if organs is None else p.abnormal_in(organs) for p in parsed])
    sens = float(pred[truth].mean())
    spec = float((~pred[~truth]).mean())
    return {
        "accuracy": float((pred == truth).mean()),
        "balanced": (sens + spec) / 2,
        "specificity": spec,
        "majority": float(max(truth.mean(), 1 - truth.mean())),
    }


# Measured on the shipped CT-RATE train.csv (800 reports, 93 with all 18 labels 0), 2026-11:
#   any sentence abnormal      : accuracy 0.956, sensitivity 1.000, specificity 0.624 (balanced 0.812)
#   thoracic sentences only    : accuracy 0.989, sensitivity 0.997, specificity 0.925 (balanced 0.961)
# val.csv (100 reports, 11 label-normal): 0.980 / 1.000. The "any" flag also counts abdominal and bone findings
# (cysts, hepatomegaly, scoliosis) that the 18 thoracic labels do not cover, hence its lower specificity.
# Always predicting "abnormal" scores 0.884 on train.csv.
@pytest.mark.parametrize(
    ("organs", "min_accuracy", "min_balanced"),
    [(None, 0.94, 0.78), (THORACIC_ORGANS, 0.975, 0.93)],
    ids=["any-organ", "thoracic"],
)
def test_report_flag_matches_ct_rate_labels(
    parsed_train: tuple[list[dict[str, str]], list[ParsedReport]],
    organs: tuple[str, ...] | None,
    min_accuracy: float,
    min_balanced: float,
) -> None:
    m = _flag_metrics(*parsed_train, organs)
    assert m["accuracy"] >= min_accuracy, m
    assert m["balanced"] >= min_balanced, m
    assert m["accuracy"] > m["majority"] + 0.05, m  # clearly better than always saying "abnormal"


def test_report_flag_on_held_out_val_csv(ct_rate_dir: Path) -> None:
    rows = _rows(ct_rate_dir, "val.csv")
    m = _flag_metrics(rows, [parse_joined_report(r["report_text"]) for r in rows], THORACIC_ORGANS)
    assert m["accuracy"] >= 0.95, m
    assert m["specificity"] >= 0.8, m


def test_joined_report_split_keeps_every_word(ct_rate_dir: Path) -> None:
    """Findings + impression recovered from ``report_text`` hold exactly the original words, for all rows."""
    methods = set()
    for name in ("train.csv", "val.csv"):
        for row in _rows(ct_rate_dir, name):
            split = split_joined_report(row["report_text"])
            methods.add(split.method)
            words = re.findall(r"[A-Za-z0-9]+", row["report_text"])
            got = re.findall(r"[A-Za-z0-9]+", split.findings + " " + split.impression)
            assert got == words, row["AccessionNo"]
            assert split.findings, row["AccessionNo"]
            assert '"' not in split.findings + split.impression
    assert {"quote", "bullet", "trailing", "none"} <= methods


def test_first_train_report_splits_at_the_quote(ct_rate_dir: Path) -> None:
    row = _rows(ct_rate_dir, "train.csv")[0]
    split = split_joined_report(row["report_text"])
    assert split.method == "quote"
    assert split.findings.endswith("Vertebral corpus heights are preserved.")
    assert split.impression == "Thoracic CT examination within normal limits."
    parsed = parse_report(split.findings, split.impression)
    assert not parsed.abnormal
    assert [s.section for s in parsed.sentences].count("impression") == 1
    bank = parsed.organ_sentences()
    assert bank["airway"] == ["Trachea, both main bronchi are open."]
    assert "Thoracic aorta diameter is normal." in bank["aorta"]
    assert "Pleural effusion-thickening was not detected." in bank["pleura"]
    assert "Vertebral corpus heights are preserved." in bank["bone"]


def test_bullet_rows_split_before_first_bullet() -> None:
    text = "Liver normal. No effusion. • Millimetric nodule in the right lung. • Hiatal hernia."
    split = split_joined_report(text)
    assert split.method == "bullet"
    assert split.findings == "Liver normal. No effusion."
    assert split.impression == "Millimetric nodule in the right lung. Hiatal hernia."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A 3.5 mm nodule. A 5x3 cm mass.", ["A 3.5 mm nodule.", "A 5x3 cm mass."]),
        ("Nodule vs. scar, e.g. in the apex. Approx. 4 mm.", ["Nodule vs. scar, e.g. in the apex.", "Approx. 4 mm."]),
        ("1. Nodule in the lung. 2. Hiatal hernia.", ["Nodule in the lung.", "Hiatal hernia."]),
        (
            "When examined in the lung parenchyma window; Aeration of both lungs is normal.",
            ["When examined in the lung parenchyma window", "Aeration of both lungs is normal."],
        ),
        ("Effusion on the right; it is small.", ["Effusion on the right; it is small."]),
        ('Preserved. " Impression one " Impression two', ["Preserved.", "Impression one", "Impression two"]),
        ("Findings. • Item one. · Item two.", ["Findings.", "Item one.", "Item two."]),
        ("Seen by Dr. A. Smith today.", ["Seen by Dr. A. Smith today."]),
        ("Liver segment 4. The lesion measures 12 mm.", ["Liver segment 4.", "The lesion measures 12 mm."]),
        ("", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    ("sentence", "organ"),
    [
        ("Trachea, both main bronchi are open.", "airway"),
        ("Pleural effusion measuring 3 cm is observed in both lungs.", "pleura"),
        ("Bilateral effusion reaching 2 mm in diameter was observed.", "pleura"),
        ("Pericardial effusion-thickening was not observed.", "heart"),
        ("Mediastinal main vascular structures, heart contour, size are normal.", "mediastinum"),
        ("No enlarged lymph nodes were detected in prevascular or subcarinal areas.", "mediastinum"),
        ("The main pulmonary artery diameter was 30 mm.", "mediastinum"),
        ("Thoracic aorta diameter is normal.", "aorta"),
        ("Sliding type hiatal hernia is observed.", "esophagus"),
        ("Millimetric nodules in both lungs.", "lung"),
        ("Patchy areas of consolidation involving the middle lobe.", "lung"),
        ("A hypodense nodule in the liver.", "upper_abdomen"),
        ("Vertebral corpus heights are preserved.", "bone"),
        ("Degenerative osteophytes were observed.", "bone"),
        ("Bilateral intrapectoral breast implant was observed.", "other"),
        ("Clinical evaluation is recommended.", "other"),
    ],
)
def test_organ_assignment(sentence: str, organ: str) -> None:
    assert organ_of(sentence) == organ
    assert organ in ORGANS


def test_all_organs_are_exposed() -> None:
    organs = assign_organs("Pleural effusion is seen with atelectasis in the adjacent lung; the liver is normal.")
    assert organs[0] == "pleura"
    assert set(organs) == {"pleura", "lung", "upper_abdomen"}


@pytest.mark.parametrize(
    ("sentence", "abnormal"),
    [
        ("Trachea, both main bronchi are open.", False),
        ("Pericardial effusion-thickening was not observed.", False),
        ("No lytic-destructive lesion was observed in bone structures.", False),
        ("Aeration of both lung parenchyma is normal and no nodular or infiltrative lesion is detected.", False),
        ("Bone structures in the study area are natural.", False),
        ("Thoracic CT examination within normal limits.", False),
        ("Findings consistent with the infiltration observed earlier show complete regression.", False),
        ("The liver is larger than normal.", True),
        ("No pleural effusion, but a 4 mm nodule is seen in the right lung.", True),
        ("There are degenerative changes in bone structures, no lytic lesion.", True),
        ("A 13x9.3 mm lymph node is observed in the right paratracheal area.", True),
        ("Intense ground glass areas are observed in both lungs.", True),
        ("A port catheter terminates at the superior vena cava.", True),
        ("Calcific atheroma plaques in the aorta and coronary arteries.", True),
    ],
)
def test_sentence_abnormality(sentence: str, abnormal: bool) -> None:
    assert is_abnormal(sentence) is abnormal


def test_placeholder_impression_is_empty() -> None:
    assert clean_section("Not given.") == ""
    assert clean_section(float("nan")) == ""
    parsed = parse_report("Trachea is open.", "Not given.")
    assert parsed.impression == "" and len(parsed.sentences) == 1


def test_organ_sentences_from_case_and_filters() -> None:
    case = Case(
        case_id="c1",
        patient_id="p1",
        split="train",
        report_findings="Trachea is open. A 6 mm nodule in the left lung upper lobe. No pleural effusion.",
        report_impression="Left upper lobe nodule.",
        report_source="radiologist",
    )
    bank = organ_sentences(case)
    assert set(bank) == set(ORGANS)
    assert bank["lung"] == ["A 6 mm nodule in the left lung upper lobe.", "Left upper lobe nodule."]
    assert organ_sentences(case, abnormal=False)["lung"] == []
    assert organ_sentences(case, section="impression")["lung"] == ["Left upper lobe nodule."]
    assert organ_sentences("No pleural effusion.")["pleura"] == ["No pleural effusion."]
    parsed = parse_report(case.report_findings, case.report_impression)
    assert parsed.abnormal and parsed.abnormal_organs == ("lung",)
    with pytest.raises(TypeError):
        organ_sentences(42)
