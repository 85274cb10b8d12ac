"""``ctrag sentences`` in-process on a real shipped CT-RATE report: JSON and text output, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ctrag.cli import main
from ctrag.reporting.sentences import REGIONS

VAL = Path(__file__).resolve().parents[2] / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "val.csv"


@pytest.fixture()
def report_file(tmp_path: Path) -> Path:
    with open(VAL, encoding="utf-8", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["AccessionNo"] == "val_139")
    path = tmp_path / "val_139.txt"
    path.write_text(row["report_text"], encoding="utf-8")
    return path


def test_json_output_on_a_real_report(report_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sentences", "--report-file", str(report_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) > 10 and all(set(s) == {"text", "regions", "abnormal"} for s in out)
    assert all(set(s["regions"]) <= set(REGIONS) for s in out)
    by_text = {s["text"]: s for s in out}
    assert by_text["Thoracic aorta diameter is normal."]["regions"] == ["mediastinum", "abdomen"]
    assert by_text["Pleural effusion-thickening was not detected."] == {
        "text": "Pleural effusion-thickening was not detected.",
        "regions": ["pleura"],
        "abnormal": False,
    }
    assert any(s["abnormal"] and s["regions"] == ["lung"] for s in out)  # the fissural nodule


def test_text_output(report_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sentences", "--report-file", str(report_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "[trachea and bronchie] (normal) Trachea, both main bronchi are open." in lines


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\xff\xfe\x00bad", "UTF-8"),
        (b"Pleural effusion. " * 3000, "over the limit"),
    ],
)
def test_bad_input_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    path = tmp_path / "report.txt"
    if content is not None:
        path.write_bytes(content)
    code = main(["sentences", "--report-file", str(path), "--json"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
