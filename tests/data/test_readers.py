"""Readers (shared part): layout detection, strict UTF-8 CSV reading with line numbers, unique-key tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrag.data.readers import (
    SkippedCase,
    detect_layouts,
    index_unique,
    read_csv_lines,
    record_or_raise,
)
from ctrag.errors import InvalidInputError


def test_detect_layouts_in_sample_data(sample_dir: Path) -> None:
    found = {(d.layout, d.path.relative_to(sample_dir).as_posix()) for d in detect_layouts(sample_dir)}
    assert found == {
        ("folder", "ct"),
        ("folder", "ct_rate_nc_sa"),
        ("ctclip-csv", "ct_rate_nc_sa/ct_clip_text_classifier"),
    }


def test_detect_layouts_finds_ct_rate_and_explains_when_nothing_matches(ct_rate_root: Path, tmp_path: Path) -> None:
    assert [(d.layout, d.path) for d in detect_layouts(ct_rate_root)] == [("ct-rate", ct_rate_root)]
    (tmp_path / "notes.txt").write_text("nothing here", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"(?s)no corpus found.*cases\.csv.*radiology_text_reports"):
        detect_layouts(tmp_path)


def test_non_utf8_csv_names_file_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_bytes(
        b"case_id,patient_id,split,findings\na,p,train,Nodule in the right lung\n"
        + "b,p,train,Lésion\n".encode("latin-1")
    )
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(InvalidInputError, match=rf"cases.csv: not valid UTF-8 at byte {offset} \(line 3"):
        read_csv_lines(path)


def test_csv_lines_count_multiline_cells_and_refuse_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "reports.csv"
    path.write_text(
        'VolumeName,Findings_EN\ntrain_1_a_1.nii.gz,"Nodule.\nSecond line."\ntrain_2_a_1.nii.gz,Normal.\n',
        encoding="utf-8",
    )
    rows = read_csv_lines(path, ("VolumeName",))
    assert [line for line, _ in rows] == [2, 4]  # the first row spans lines 2-3
    assert rows[0][1]["Findings_EN"] == "Nodule.\nSecond line."
    with pytest.raises(InvalidInputError, match=r"missing column\(s\) \['Impressions_EN'\]"):
        read_csv_lines(path, ("VolumeName", "Impressions_EN"))
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="empty CSV"):
        read_csv_lines(empty)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2,3\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"ragged\.csv:2: more cells than header columns"):
        read_csv_lines(ragged)


def test_index_unique_names_both_lines_of_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("VolumeName,x\ntrain_1_a_1.nii.gz,1\ntrain_2_a_1.nii.gz,0\ntrain_1_a_1,0\n", encoding="utf-8")
    rows = read_csv_lines(path, ("VolumeName",))
    assert set(index_unique(rows[:2], "VolumeName", path)) == {"train_1_a_1.nii.gz", "train_2_a_1.nii.gz"}
    with pytest.raises(InvalidInputError, match=r"'train_1_a_1' appears in two rows \(lines 2 and 4\)"):
        index_unique(rows, "VolumeName", path, key=lambda name: name.removesuffix(".nii.gz"))


def test_record_or_raise() -> None:
    skipped = SkippedCase("a", "cases.csv:3", "empty patient_id")
    errors: list[SkippedCase] = []
    record_or_raise(errors, skipped)
    assert errors == [skipped] and skipped.to_dict()["source"] == "cases.csv:3"
    with pytest.raises(InvalidInputError, match=r"cases\.csv:3: case 'a': empty patient_id"):
        record_or_raise(None, skipped)


def test_read_text_table_reads_real_reports_and_refuses_bad_tables(tmp_path: Path) -> None:
    """Reports to score (``ctrag evaluate reports``): one id -> one text, or a clear error naming the line."""
    import csv
    import json

    from ctrag.data.readers import read_text_table

    src = Path(__file__).resolve().parents[2] / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "val.csv"
    with open(src, encoding="utf-8", newline="") as fh:
        real = [(row["AccessionNo"], row["report_text"]) for row in list(csv.DictReader(fh))[:5]]
    (tmp_path / "r.jsonl").write_text(
        "".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in real), encoding="utf-8"
    )
    assert read_text_table(tmp_path / "r.jsonl", "id", "text") == {k: t for k, t in real}
    with open(tmp_path / "r.csv", "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([["id", "text"], *real])
    assert read_text_table(tmp_path / "r.csv", "id", "text") == {k: t.strip() for k, t in real}

    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps({"id": "a", "text": "x"}) + "\n\n" + json.dumps({"id": "a", "text": "y"}) + "\n")
    with pytest.raises(InvalidInputError, match=r"appears in two rows \(lines 1 and 3\)"):
        read_text_table(dup, "id", "text")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\n{"id": "b", text\n', encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl:2: not valid JSON"):
        read_text_table(bad, "id", "text")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"list\.jsonl:1: a report record must be a JSON object, got list"):
        read_text_table(tmp_path / "list.jsonl", "id", "text")
    (tmp_path / "latin1.csv").write_bytes("id,text\na,Lésion\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        read_text_table(tmp_path / "latin1.csv", "id", "text")
    with pytest.raises(InvalidInputError, match="lacks the 'id' or 'report' column"):
        read_text_table(tmp_path / "r.csv", "id", "report")
    (tmp_path / "r.txt").write_text("id,text\na,x\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=r"expected a \.csv or \.jsonl"):
        read_text_table(tmp_path / "r.txt", "id", "text")
    with pytest.raises(InvalidInputError, match="file not found"):
        read_text_table(tmp_path / "missing.csv", "id", "text")
