"""``ctrag labels``: JSON and table output for a real CT-RATE sentence set, and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctrag.cli import main
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.report_text import MAX_REPORT_BYTES
from ctrag.labels.extractor import LabelExtractor

REPORT = (
    "Heart size increased. Pericardial effusion-thickening was not observed. Minimal pleural effusion is observed "
    "in the right hemithorax. No pathologically enlarged lymph nodes were detected in the mediastinum."
)


@pytest.fixture(scope="module")
def model_dir(extractor: LabelExtractor, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extractor.save(tmp_path_factory.mktemp("labels") / "model")


def test_json_output(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.txt"
    report.write_text(REPORT, encoding="utf-8")
    assert main(["labels", "--report-file", str(report), "--model", str(model_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["probabilities"]) == list(CT_RATE_LABELS)
    assert set(out["labels"]) == {"Cardiomegaly", "Pleural effusion"}
    assert all(out["probabilities"][n] >= out["thresholds"][n] for n in out["labels"])
    assert out["model_fingerprint"] == LabelExtractor.load(model_dir).fingerprint()


def test_plain_text_output_fits_on_the_shipped_train_reports(
    ct_rate_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "saved"
    assert (
        main(
            [
                "labels",
                "Bilateral pleural effusion is observed.",
                "--train",
                str(ct_rate_dir),
                "--save-model",
                str(saved),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "present: Pleural effusion" in out and "Cardiomegaly" in out  # table lists all labels
    assert LabelExtractor.load(saved).info["train_split"] == "train"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"   \n", "is empty"),
        (b"\xff\xfe bad", "not valid UTF-8"),
        (b"x" * (MAX_REPORT_BYTES + 1), f"over the limit of {MAX_REPORT_BYTES} bytes"),
    ],
)
def test_bad_report_file(
    content: bytes | None, message: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "report.txt"
    if content is not None:
        path.write_bytes(content)
    assert main(["labels", "--report-file", str(path), "--model", str(model_dir)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err


def test_bad_model_and_arguments(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["labels", "text", "--model", str(tmp_path)]) == 2
    assert "not a folder holding label_extractor.json" in capsys.readouterr().err
    assert main(["labels", "--model", str(model_dir)]) == 2
    assert "no report" in capsys.readouterr().err
    assert main(["labels", "text", "--train", str(tmp_path / "missing")]) == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())
