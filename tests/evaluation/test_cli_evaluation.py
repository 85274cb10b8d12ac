"""CLI: ``ctrag train classifier`` on a corpus of real CTs, ``ctrag evaluate reports``, config errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ctrag.cli import main
from ctrag.data.case import Case, Corpus
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.evaluation.classifier import ClinicalClassifier


@pytest.fixture()
def corpus_dir(tmp_path: Path, sample_dir: Path) -> Path:
    ct = sample_dir / "ct"
    cases = [
        Case("A0001", "Lung_Dx-A0001", "train", volume_path=str(ct / "lowres/lung_pet_ct_dx_A0001_ct_128.nii.gz")),
        Case("ts_sm", "ts_example", "train", volume_path=str(ct / "lowres/ts_example_ct_sm_3mm.nii.gz")),
        Case(
            "lidc",
            "LIDC-IDRI-0314",
            "test",
            report_findings="Single right lung lesion.",
            report_source="annotation-derived",
            volume_path=str(ct / "extra/lidc_idri_0314_ct_lowres.nii.gz"),
        ),
    ]
    Corpus(cases).save(tmp_path / "corpus")
    return tmp_path / "corpus"


def _label_file(path: Path, rows: dict[str, int]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", *CT_RATE_LABELS, "label_source"])
        for case_id, nodule in rows.items():
            labels = [0] * 18
            labels[CT_RATE_LABELS.index("Lung nodule")] = nodule
            writer.writerow([case_id, *labels, "annotation-derived (test)"])
    return path


def test_train_classifier_records_label_sources(tmp_path: Path, corpus_dir: Path) -> None:
    labels = _label_file(tmp_path / "labels.csv", {"A0001": 1, "ts_sm": 0})
    out = tmp_path / "clf"
    code = main(
        [
            "train", "classifier", "--corpus", str(corpus_dir), "--out", str(out), "--labels", str(labels),
            "--set", "epochs=2", "--set", "input_shape=[16,16,12]", "--set", "trunk_channels=[4,8,8,8]",
            "--set", "reducer_channels=[8,4]", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    clf = ClinicalClassifier.load(out)
    assert clf.metadata["n_train"] == 2  # the test-split CT is never used for training
    assert clf.metadata["label_sources"] == ["annotation-derived (test)"]
    assert {c["case_id"] for c in clf.metadata["cases"]} == {"A0001", "ts_sm"}
    assert clf.metadata["positives_per_label"] == {"Lung nodule": 1}
    assert json.loads((out / "classifier.json").read_text())["config"]["input_shape"] == [16, 16, 12]


def test_train_classifier_without_labels_fails_clearly(tmp_path: Path, corpus_dir: Path, capsys) -> None:
    code = main(["train", "classifier", "--corpus", str(corpus_dir), "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == 2
    assert "nothing to train the classifier on" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    bad = _label_file(tmp_path / "bad.csv", {"nope": 1})
    code = main(
        ["train", "classifier", "--corpus", str(corpus_dir), "--out", str(tmp_path / "y"), "--labels", str(bad)]
    )
    assert code == 2 and "not in the corpus" in capsys.readouterr().err


def test_evaluate_reports_writes_metrics(tmp_path: Path, ct_rate_dir: Path) -> None:
    with open(ct_rate_dir / "val.csv", encoding="utf-8") as fh:
        texts = [row["report_text"] for row in csv.DictReader(fh)][:4]
    refs = tmp_path / "refs.jsonl"
    hyps = tmp_path / "hyps.csv"
    refs.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    with open(hyps, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        for i, t in enumerate(texts):
            writer.writerow([str(i), t if i < 2 else texts[0]])
    out = tmp_path / "res"
    args = ["evaluate", "reports", "--refs", str(refs), "--hyps", str(hyps), "--out", str(out), "--no-meteor"]
    labels = ["--fit-labels", str(ct_rate_dir / "train.csv"), "--label-val", str(ct_rate_dir / "val.csv")]
    assert main([*args, *labels]) == 0
    record = json.loads((out / "report_metrics.json").read_text())
    assert 0.3 < record["bleu_4"] < 1.0 and record["meteor"] is None
    assert record["label_extractor_quality"]["n_reports"] == 100
    assert 0.0 < record["clinical_efficacy"]["f1_micro"] < 1.0
    assert "METEOR" in (out / "report_metrics.md").read_text()
    hyps.write_text("id,text\n0,only one\n")
    code = main(["evaluate", "reports", "--refs", str(refs), "--hyps", str(hyps), "--out", str(out), "--no-meteor"])
    assert code == 2


def test_evaluate_generation_config_errors(tmp_path: Path, corpus_dir: Path, capsys) -> None:
    code = main(["evaluate", "generation", "--out", str(tmp_path), "--set", "methods=[nearest,telepathy]"])
    assert code == 2 and "telepathy" in capsys.readouterr().err
    code = main(["evaluate", "generation", "--out", str(tmp_path), "--corpus", str(corpus_dir), "--no-progress"])
    assert code == 2 and "evaluation.pipeline" in capsys.readouterr().err
