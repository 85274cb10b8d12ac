"""Region tagging, abnormal flag and splitting of CT-RATE sentences, measured on the hand-labelled set.

The labelled set (``tests/data/ct_rate_nc_sa/region_sentences.jsonl``, README beside it) holds 175 sentences of
train reports the rules were corrected on ("dev") and 198 sentences of val reports that were only measured
("test"). The floors below are what the issue asks of the tagger (micro-F1 >= 0.90 on RadGenome-style labels)
on the test part, and a margin under the measured figures elsewhere, so a regression of a few sentences fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctrag.reporting.sentences import (
    REGIONS,
    is_lead_in,
    sentence_is_abnormal,
    split_report,
    tag_regions,
    tag_report,
    tag_report_text,
    tag_sentences,
)

LABELLED = Path(__file__).resolve().parents[1] / "data" / "ct_rate_nc_sa" / "region_sentences.jsonl"


def _rows(use: str) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r["use"] == use]


def _micro(pairs: list[tuple[set[str], set[str]]]) -> tuple[float, float, float]:
    tp = sum(len(p & g) for p, g in pairs)
    fp = sum(len(p - g) for p, g in pairs)
    fn = sum(len(g - p) for p, g in pairs)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return precision, recall, 2 * precision * recall / (precision + recall)


def test_labelled_set_is_well_formed() -> None:
    dev, test = _rows("dev"), _rows("test")
    assert len(dev) + len(test) >= 300
    assert {r["split"] for r in dev} == {"train"} and {r["split"] for r in test} == {"val"}
    assert not {r["case_id"] for r in dev} & {r["case_id"] for r in test}
    for r in dev + test:
        assert set(r["regions"]) <= set(REGIONS) and isinstance(r["abnormal"], bool)  # type: ignore[arg-type]


@pytest.mark.parametrize(("use", "floor"), [("test", 0.90), ("dev", 0.92)])
def test_region_micro_f1_on_labelled_sentences(use: str, floor: float) -> None:
    rows = _rows(use)
    pairs = [(set(tag_regions(str(r["text"]))), set(r["regions"])) for r in rows]  # type: ignore[arg-type]
    precision, recall, f1 = _micro(pairs)
    assert f1 >= floor, f"{use}: micro P {precision:.3f} R {recall:.3f} F1 {f1:.3f} < {floor}"
    assert precision >= 0.9 and recall >= 0.85


def test_context_inheritance_raises_recall_on_report_order() -> None:
    """Read in report order, a sentence naming no region takes its predecessor's regions (rule 8 of the README)."""
    rows = _rows("test")
    by_case: dict[str, list[dict[str, object]]] = {}
    for r in rows:
        by_case.setdefault(str(r["case_id"]), []).append(r)
    isolated, in_context = [], []
    for case_rows in by_case.values():
        tagged = tag_sentences([str(r["text"]) for r in case_rows])
        for r, t in zip(case_rows, tagged, strict=True):
            gold = set(r["regions"])  # type: ignore[arg-type]
            isolated.append((set(tag_regions(str(r["text"]))), gold))
            in_context.append((set(t.regions), gold))
    assert _micro(in_context)[1] > _micro(isolated)[1]
    assert _micro(in_context)[2] >= 0.90


@pytest.mark.parametrize("use", ["dev", "test"])
def test_abnormal_flag_accuracy(use: str) -> None:
    rows = _rows(use)
    correct = sum(sentence_is_abnormal(str(r["text"])) == r["abnormal"] for r in rows)
    assert correct / len(rows) >= 0.93


@pytest.mark.parametrize(
    ("sentence", "regions"),
    [
        ("Thoracic aorta diameter is normal.", ("mediastinum", "abdomen")),
        ("The ascending aorta measures 44 mm and is wider than normal.", ("mediastinum", "heart", "abdomen")),
        ("No dilatation or stenosis was detected in the abdominal aorta.", ("abdomen",)),
        ("Mediastinal main vascular structures, heart contour, size are normal.", ("mediastinum", "heart")),
        ("Pulmonary artery diameter was measured 29 mm.", ("mediastinum",)),
        ("Lymphadenopathy with a short diameter of 15 mm is observed in the right hilar region.", ("lung",)),
        ("No enlarged lymph nodes were detected in the mediastinum and hilar regions.", ("mediastinum",)),
        ("There are intrapulmonary lymph nodes in the bilateral major fissure.", ("lung",)),
        ("No lymph node was observed in the supraclavicular fossa and axilla.", ("bone",)),
        ("Pleural effusion-thickening was not detected.", ("pleura",)),
        ("Pleural thickening of 4 mm is observed on the right.", ("pleura",)),
        ("There is a millimetric subpleural nodule in the right lung.", ("pleura",)),
        ("Pericardial effusion-thickening was not observed.", ("heart",)),
        ("No pleural or pericardial effusion was detected.", ("pleura",)),
        ("Pleuroparenchymal sequelae bands are observed in both lungs.", ("lung",)),
        ("Osteophytes are observed in the thoracic vertebrae.", ("bone",)),
        ("There is a 9 mm hypodense lesion in the liver segment 7 (cyst?).", ("abdomen",)),
        ("Bilateral adrenal glands were normal.", ("abdomen",)),
        ("A cortical cyst is observed in the right kidney.", ("abdomen",)),
        ("There is a hypodense nodule 10 mm in diameter in the right thyroid lobe.", ("thyroid",)),
        ("Bilateral gynecomastia was observed.", ("breast",)),
        ("Sliding type hiatal hernia was observed.", ("esophagus",)),
        ("Trachea, both main bronchi are open.", ("trachea and bronchie",)),
        ("When examined in the lung parenchyma window; trachea and both main bronchi are open.",
         ("trachea and bronchie",)),
        ("Bronchiectasis is observed in the lower lobes of both lungs.", ("lung",)),
        ("Peribronchial thickness increase is observed.", ("trachea and bronchie",)),
        ("Calcific atheroma plaques are observed in the aorta and coronary arteries.",
         ("mediastinum", "heart", "abdomen")),
        ("Clinical correlation is recommended.", ()),
    ],
)  # fmt: skip
def test_region_conventions(sentence: str, regions: tuple[str, ...]) -> None:
    assert tag_regions(sentence) == regions


@pytest.mark.parametrize(
    ("sentence", "abnormal"),
    [
        ("Pleural effusion-thickening was not detected.", False),
        ("Upper abdominal organs included in the sections are within normal limits.", False),
        ("Bone structures in the study area are natural.", False),
        ("No pathological lymph node was observed in the mediastinum.", False),
        ("A 4.5 mm nonspecific nodule is observed in the right lung upper lobe.", True),
        ("There is minimal pericardial effusion.", True),
        ("Left adrenal adenoma.", True),
        ("Height loss is observed in the T6 vertebral body.", True),
        ("When examined in the lung parenchyma window; aeration of both lungs is normal.", False),
    ],
)
def test_abnormal_flag(sentence: str, abnormal: bool) -> None:
    assert sentence_is_abnormal(sentence) is abnormal


def test_split_keeps_decimals_sizes_and_abbreviations() -> None:
    text = (
        "A 3.5 mm nodule is observed in the right lung (series 2, image 140), e.g. in the apex vs. the base. "
        "Lymph nodes measuring 17x13 mm (previously 1.7 cm) were observed. Thoracic aorta diameter is normal."
    )
    assert split_report(text) == [
        "A 3.5 mm nodule is observed in the right lung (series 2, image 140), e.g. in the apex vs. the base.",
        "Lymph nodes measuring 17x13 mm (previously 1.7 cm) were observed.",
        "Thoracic aorta diameter is normal.",
    ]


def test_split_repairs_glued_stops_and_lead_ins() -> None:
    text = (
        "Heart contour, size are normal.Thoracic aorta diameter is normal. When examined in the lung parenchyma "
        "window; Aeration of both lung parenchyma is normal. As far as can be seen; Bone structures are natural."
    )
    assert split_report(text) == [
        "Heart contour, size are normal.",
        "Thoracic aorta diameter is normal.",
        "When examined in the lung parenchyma window; aeration of both lung parenchyma is normal.",
        "As far as can be seen; bone structures are natural.",
    ]
    assert is_lead_in("When examined in the lung parenchyma window") and not is_lead_in("Lungs are clear.")
    assert tag_regions("When examined in the lung parenchyma window") == ("lung",)


def test_split_run_on_impression_items_and_empty_input() -> None:
    tagged = tag_report_text(
        'Trachea, both main bronchi are open. Pleural effusion was not detected. " Emphysema" Atelectasis in the '
        "left lower lobe; Minimal pericardial effusion"
    )
    assert [t.section for t in tagged] == ["findings", "findings", "impression", "impression", "impression"]
    assert [t.regions for t in tagged[2:]] == [("lung",), ("lung",), ("heart",)]
    assert [t.abnormal for t in tagged] == [False, False, True, True, True]
    assert split_report("") == [] and tag_report("", "") == [] and tag_regions("   ") == ()


def test_inherited_regions_follow_the_previous_sentence() -> None:
    tagged = tag_report("The aortic arch calibration is 33 mm. It is wider than normal. Follow-up is recommended.")
    assert [t.regions for t in tagged] == [("mediastinum", "abdomen")] * 3
    assert tagged[1].abnormal and not tagged[2].abnormal
