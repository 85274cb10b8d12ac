"""``ctrag ingest`` through ``ctrag.cli.main``: the shipped sample data end to end, and every bad input.

Each bad-input test first ingests a good corpus into ``--out``, then ingests a corpus with one bad case into the
same folder: the command must exit non-zero with a message naming the problem, and the previous manifest and
validation report must be byte-identical afterwards.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctrag.cli import main
from ctrag.data.case import Corpus
from ctrag.data.folder import KNOWN_COLUMNS

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
CT = SAMPLE / "ct" / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz"
CROP_CT = SAMPLE / "ct" / "lowres" / "ts_chest_crop_ct_3mm.nii.gz"
CROP_MASK = SAMPLE / "ct" / "lowres" / "ts_chest_crop_ct_3mm_seg_total_subset.nii.gz"
OTHER_MASK = SAMPLE / "ct" / "lowres" / "ts_example_ct_sm_3mm_seg_total.nii.gz"
COLUMNS = list(KNOWN_COLUMNS)
TEXT = "A mass is present in the middle zone of the right lung."


def _row(case_id: str, **fields: str) -> dict[str, str]:
    row = {
        "case_id": case_id,
        "patient_id": f"patient_{case_id}",
        "split": "train",
        "volume": str(CT),
        "findings": TEXT,
        "report_source": "annotation-derived",
        "dataset": "test",
    }
    row.update(fields)
    return row


def _corpus(folder: Path, rows: list[dict[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cases.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return folder


def _save(path: Path, array: np.ndarray, affine: np.ndarray, qcode: int = 1, scode: int = 1) -> str:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine if qcode else None, code=qcode)
    img.set_sform(affine if scode else None, code=scode)
    nib.save(img, str(path))
    return str(path)


def _real(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


@pytest.fixture()
def good_out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    good = _corpus(
        tmp_path / "good",
        [
            _row("good_1"),
            _row("good_2", volume=str(CROP_CT), mask=str(CROP_MASK), mask_source="totalsegmentator-total-subset"),
        ],
    )
    assert main(["ingest", str(good), "--out", str(out), "--no-progress"]) == 0
    return out


def _snapshot(out: Path) -> dict[str, bytes]:
    return {
        name: (out / name).read_bytes() for name in ("manifest.jsonl", "validation_report.json", "validation_report.md")
    }


# Each builder writes whatever it needs under ``tmp`` and returns the bad rows.
def _truncated(tmp: Path) -> list[dict[str, str]]:
    data = CT.read_bytes()
    (tmp / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return [_row("bad", volume=str(tmp / "cut.nii.gz"))]


def _not_nifti(tmp: Path) -> list[dict[str, str]]:
    (tmp / "notes.nii.gz").write_bytes(gzip.compress(b"this is a text file, not an image" * 20))
    return [_row("bad", volume=str(tmp / "notes.nii.gz"))]


def _two_d(tmp: Path) -> list[dict[str, str]]:
    arr, aff = _real(CT)
    return [_row("bad", volume=_save(tmp / "slice.nii.gz", np.ascontiguousarray(arr[:, :, 15]), aff))]


def _windowed(tmp: Path) -> list[dict[str, str]]:
    arr, aff = _real(CT)
    windowed = np.clip((arr.astype(np.float32) + 160) / 400 * 255, 0, 255).astype(np.uint8)
    return [_row("bad", volume=_save(tmp / "windowed.nii.gz", windowed, aff))]


def _normalised(tmp: Path) -> list[dict[str, str]]:
    arr, aff = _real(CT)
    return [_row("bad", volume=_save(tmp / "norm.nii.gz", (np.clip(arr, -1000, 1000) + 1000) / 2000.0, aff))]


def _no_affine(tmp: Path) -> list[dict[str, str]]:
    arr, aff = _real(CT)
    return [_row("bad", volume=_save(tmp / "noaff.nii.gz", arr, aff, qcode=0, scode=0))]


def _singular_affine(tmp: Path) -> list[dict[str, str]]:
    arr, aff = _real(CT)
    header = nib.Nifti1Header()
    header.set_data_shape(arr.shape)
    header.set_data_dtype(arr.dtype)
    for row, name in enumerate(("srow_x", "srow_y", "srow_z")):
        header[name] = aff[row] * np.array([1.0, 1.0, 0.0, 1.0])  # zero slice spacing: singular
    header["sform_code"] = 1
    header["qform_code"] = 0
    path = tmp / "singular.nii.gz"
    nib.save(nib.Nifti1Image(arr, None, header=header), str(path))
    return [_row("bad", volume=str(path))]


def _missing_file(tmp: Path) -> list[dict[str, str]]:
    return [_row("bad", volume=str(tmp / "nowhere.nii.gz"))]


def _mask_other_grid(tmp: Path) -> list[dict[str, str]]:
    return [_row("bad", volume=str(CROP_CT), mask=str(OTHER_MASK), mask_source="totalsegmentator-total")]


def _unknown_labels(tmp: Path) -> list[dict[str, str]]:
    arr, aff = _real(CROP_MASK)
    arr = arr.copy()
    arr[30, 30, 40] = 200
    return [
        _row("bad", volume=str(CROP_CT), mask=_save(tmp / "m.nii.gz", arr, aff), mask_source="totalsegmentator-total")
    ]


def _unknown_mask_source(tmp: Path) -> list[dict[str, str]]:
    return [_row("bad", volume=str(CROP_CT), mask=str(CROP_MASK), mask_source="my-own-labels")]


def _missing_report(tmp: Path) -> list[dict[str, str]]:
    return [_row("bad", findings="", report_source="radiologist")]


def _empty_report_only(tmp: Path) -> list[dict[str, str]]:
    return [_row("bad", volume="", findings="", report_source="none")]


def _text_without_source(tmp: Path) -> list[dict[str, str]]:
    return [_row("bad", report_source="none")]


def _huge_report(tmp: Path) -> list[dict[str, str]]:
    return [_row("bad", volume="", findings="A nodule in the right lung. " * 3700)]  # about 100 kB


def _duplicate_ids(tmp: Path) -> list[dict[str, str]]:
    return [_row("dup"), _row("dup", patient_id="someone_else")]


def _patient_two_splits(tmp: Path) -> list[dict[str, str]]:
    return [_row("p_train", patient_id="P1"), _row("p_test", patient_id="P1", split="test")]


BAD_INPUTS: list[tuple[str, Callable[[Path], list[dict[str, str]]], str]] = [
    ("truncated", _truncated, "unreadable or truncated NIfTI"),
    ("not-nifti", _not_nifti, "unreadable or truncated NIfTI"),
    ("2d-image", _two_d, "expected a 3-D volume"),
    ("windowed-8bit", _windowed, "no negative values"),
    ("normalised", _normalised, "look normalised, not Hounsfield units"),
    ("no-affine", _no_affine, "no orientation information"),
    ("singular-affine", _singular_affine, "affine is singular"),
    ("missing-file", _missing_file, "file not found"),
    ("mask-other-grid", _mask_other_grid, "is on another grid than image"),
    ("unknown-mask-labels", _unknown_labels, r"unknown label ids \[200\]"),
    ("unknown-mask-source", _unknown_mask_source, "unknown mask_source 'my-own-labels'"),
    ("missing-report", _missing_report, "missing report: report_source is 'radiologist'"),
    ("report-only-without-text", _empty_report_only, "report-only case has no report text"),
    ("text-with-source-none", _text_without_source, "report_source is 'none'"),
    ("report-too-large", _huge_report, r"report is \d+ bytes, over the limit of 32768 bytes"),
    ("duplicate-ids", _duplicate_ids, "duplicate case id 'dup'"),
    ("patient-in-two-splits", _patient_two_splits, "patient P1 has cases in several splits"),
]


@pytest.mark.parametrize(("builder", "message"), [(b, m) for _, b, m in BAD_INPUTS], ids=[i for i, _, _ in BAD_INPUTS])
def test_bad_input_is_refused_and_previous_output_kept(
    tmp_path: Path,
    good_out: Path,
    capsys: pytest.CaptureFixture[str],
    builder: Callable[[Path], list[dict[str, str]]],
    message: str,
) -> None:
    before = _snapshot(good_out)
    files = tmp_path / "files"
    files.mkdir()
    bad = _corpus(tmp_path / "bad", [_row("fine"), *builder(files)])
    capsys.readouterr()
    code = main(["ingest", str(bad), "--out", str(good_out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "failed validation" in err and "--allow-skips" in err
    assert re.search(message, err), err
    assert _snapshot(good_out) == before
    rejected = json.loads((good_out / "validation_report.rejected.json").read_text(encoding="utf-8"))
    assert rejected["n_skipped"] >= 1 and "fine" not in {s["case_id"] for s in rejected["skipped"]}


def test_allow_skips_writes_the_good_cases(tmp_path: Path, good_out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = tmp_path / "files"
    files.mkdir()
    bad = _corpus(tmp_path / "bad", [_row("fine"), *_truncated(files), *_huge_report(files)])
    assert main(["ingest", str(bad), "--out", str(good_out), "--no-progress"]) == 2
    assert (good_out / "validation_report.rejected.md").is_file()
    assert main(["ingest", str(bad), "--out", str(good_out), "--allow-skips", "--no-progress"]) == 0
    assert "2 case(s) skipped" in capsys.readouterr().err
    assert Corpus.load(good_out).case_ids == ["fine"]
    report = json.loads((good_out / "validation_report.json").read_text(encoding="utf-8"))
    assert report["n_cases"] == 1 and {s["case_id"] for s in report["skipped"]} == {"bad"}
    assert len(report["skipped"]) == 2
    assert "## Skipped cases" in (good_out / "validation_report.md").read_text(encoding="utf-8")
    assert not (good_out / "validation_report.rejected.md").exists()  # stale rejection removed


def test_non_utf8_csv_writes_nothing(tmp_path: Path, good_out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(good_out)
    folder = tmp_path / "latin1"
    folder.mkdir()
    header = ",".join(COLUMNS) + "\n"
    line = f"x,p,train,{CT},,,Lésion pulmonaire droite,,annotation-derived,test\n"
    (folder / "cases.csv").write_bytes(header.encode() + line.encode("latin-1"))
    offset = (folder / "cases.csv").read_bytes().index(b"\xe9")
    capsys.readouterr()
    assert main(["ingest", str(folder), "--out", str(good_out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cases.csv: not valid UTF-8 at byte {offset}" in err
    assert _snapshot(good_out) == before
    assert sorted(p.name for p in good_out.iterdir()) == sorted(before)  # nothing else written
    fresh = tmp_path / "fresh"
    assert main(["ingest", str(folder), "--out", str(fresh), "--no-progress"]) == 2
    assert not fresh.exists()


def test_unknown_source_and_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["ingest", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no corpus found" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert main(["ingest", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--layout", "dicom"]) == 2
    assert "--layout must be" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--rescale", "maybe"]) == 2
    assert "rescale must be one of" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sample_data_end_to_end(tmp_path: Path, sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "corpus"
    assert main(["ingest", str(sample_dir), "--out", str(out), "--no-progress"]) == 0
    assert "906 case(s) ingested" in capsys.readouterr().out
    corpus = Corpus.load(out)
    assert corpus.counts() == {"train": 807, "val": 98, "test": 1}
    report = json.loads((out / "validation_report.json").read_text(encoding="utf-8"))
    assert report["n_skipped"] == 0
    assert report["counts"]["report_source"] == {"annotation-derived": 6, "radiologist": 900}
    assert report["counts"]["kind"] == {"mask-only": 1, "report-only": 900, "volume": 3, "volume+mask": 2}
    assert report["counts"]["split_by_dataset"]["lidc-idri"] == {"test": 1}
    lidc = corpus.get("lidc_idri_0314")
    assert lidc.split == "test" and lidc.shape == (128, 128, 55)
    assert lidc.spacing == pytest.approx((3.125, 3.125, 5.0))
    assert lidc.extra["orientation"] == "LPS" and lidc.extra["hu_p1"] <= -990 and lidc.extra["hu_p99"] > 0
    assert Path(lidc.volume_path or "").is_file()  # manifest paths resolve from the output folder
    ts = corpus.get("ts_example_ct")
    assert len(ts.extra["mask_labels"]) == 61 and ts.extra["orientation"] == "RAS"
    mask_only = corpus.get("ctrate_mask_ragtext2ct")
    assert mask_only.volume_path is None and mask_only.extra["mask_grid"]["shape"] == [512, 512, 128]
    # every patient in exactly one split
    splits: dict[str, set[str]] = {}
    for case in corpus:
        splits.setdefault(case.patient_id, set()).add(case.split)
    assert all(len(s) == 1 for s in splits.values())
    md = (out / "validation_report.md").read_text(encoding="utf-8")
    assert "| lidc_idri_0314 | 128x128x55 |" in md
    # the same ingest again over the good output is idempotent apart from the timestamp
    manifest = (out / "manifest.jsonl").read_bytes()
    assert main(["ingest", str(sample_dir), "--out", str(out), "--no-progress"]) == 0
    assert (out / "manifest.jsonl").read_bytes() == manifest
    shutil.rmtree(out)


def _ct_rate_reports_only(root: Path, rows: int = 3, duplicate: bool = False) -> Path:
    """A CT-RATE copy that holds only ``radiology_text_reports`` (real CT-RATE report text, no volumes)."""
    with open(SAMPLE / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "val.csv", encoding="utf-8", newline="") as fh:
        texts = [r["report_text"] for r, _ in zip(csv.DictReader(fh), range(rows), strict=False)]
    folder = root / "dataset" / "radiology_text_reports"
    folder.mkdir(parents=True)
    lines = [[f"train_{i + 1}_a_1.nii.gz", *text.partition('"')[::2]] for i, text in enumerate(texts)]
    if duplicate:
        lines.append([lines[0][0], "Another report for the same volume.", "No acute finding."])
    with open(folder / "train_reports.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["VolumeName", "Findings_EN", "Impressions_EN"])
        writer.writerows(lines)
    return root


def test_reports_only_ct_rate_copy_names_the_cli_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The error used to tell CLI users to 'pass include_report_only=True', a Python keyword."""
    source = _ct_rate_reports_only(tmp_path / "ctrate")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["ingest", str(source), "--out", str(out), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no CT-RATE volume folder" in err and "ctrag ingest --include-report-only" in err
    assert main(["ingest", str(source), "--out", str(out), "--no-progress", "--include-report-only"]) == 0
    corpus = Corpus.load(out)
    assert corpus.case_ids == ["train_1_a_1", "train_2_a_1", "train_3_a_1"]
    assert all(c.volume_path is None and c.has_report and c.report_source == "radiologist" for c in corpus)
    report = json.loads((out / "validation_report.json").read_text(encoding="utf-8"))
    assert report["options"]["include_report_only"] is True


def test_two_report_rows_for_one_volume_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second row for one VolumeName used to replace the first report silently."""
    source = _ct_rate_reports_only(tmp_path / "ctrate", duplicate=True)
    capsys.readouterr()
    code = main(["ingest", str(source), "--out", str(tmp_path / "out"), "--no-progress", "--include-report-only"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "train_reports.csv: VolumeName 'train_1_a_1.nii.gz' appears in two rows (lines 2 and 5)" in err
    assert not (tmp_path / "out").exists()


def test_progress_bar_gets_the_validate_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI drives its bar from ctrag.utils.progress.ProgressFn calls: progress('validate', done, total)."""
    from ctrag.data import ingest as ingest_module

    seen: list[tuple[str, int, int]] = []
    real = ingest_module.ingest

    def spy(*args: object, progress: object = None, **kwargs: object) -> object:
        def record(stage: str, done: int, total: int) -> None:
            seen.append((stage, done, total))
            progress(stage, done, total)  # type: ignore[operator]

        return real(*args, progress=record, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_module, "ingest", spy)  # cmd_ingest imports it when the command runs
    source = _corpus(tmp_path / "c", [_row("one"), _row("two")])
    assert main(["ingest", str(source), "--out", str(tmp_path / "out")]) == 0
    assert seen == [("validate", 1, 2), ("validate", 2, 2)]
