"""What every corpus reader shares: strict CSV reading, skipped-case records and layout detection.

Readers turn a folder the user already has into :class:`~ctrag.data.case.Case` objects. Three layouts exist:

- ``folder``: NIfTI files plus a ``cases.csv`` (:mod:`ctrag.data.folder`);
- ``ct-rate``: the public CT-RATE release (:mod:`ctrag.data.ct_rate`);
- ``ctclip-csv``: the CT-CLIP text-classifier CSVs, report-only (:mod:`ctrag.data.ct_rate`).

Readers never drop a row silently. Given an ``errors`` list they append a :class:`SkippedCase` for a bad row and
go on; without one they raise on the first bad row. :func:`detect_layouts` walks a source folder and returns
every layout root it recognises, so ``ctrag ingest sample_data`` finds all three kinds in one call.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ctrag.errors import DataValidationError, InvalidInputError

Layout = Literal["folder", "ct-rate", "ctclip-csv"]
LAYOUTS: tuple[str, ...] = ("folder", "ct-rate", "ctclip-csv")
FOLDER_CSV_NAME = "cases.csv"
CTCLIP_CSV_HEADER = ("AccessionNo", "report_text")

# Directories never worth descending into while looking for layouts.
_PRUNE_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".pytest_cache"}
# CT-RATE per-patient / per-scan volume folders: thousands of them, never a layout root.
_VOLUME_DIR_RE = re.compile(r"^(?:train|valid)_\d+(?:_[a-z]+)?$")
_MAX_DEPTH = 5


@dataclass(frozen=True)
class SkippedCase:
    """A case (or CSV row) that was not ingested, with the reason, so nothing is dropped silently."""

    case_id: str
    source: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"case_id": self.case_id, "source": self.source, "reason": self.reason}


def record_or_raise(errors: list[SkippedCase] | None, skipped: SkippedCase) -> None:
    """Append ``skipped`` to ``errors``; raise ``InvalidInputError`` instead when no list was given."""
    if errors is None:
        raise InvalidInputError(f"{skipped.source}: case {skipped.case_id!r}: {skipped.reason}")
    errors.append(skipped)


def read_text_utf8(path: str | os.PathLike[str]) -> str:
    """Read a text file as strict UTF-8 (a BOM is accepted); name the file and byte offset when it is not."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{file}: cannot read ({exc})") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidInputError(
            f"{file}: not valid UTF-8 at byte {exc.start} (line {line}, byte 0x{data[exc.start]:02x}); "
            "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from exc


def read_csv_lines(path: str | os.PathLike[str], required: tuple[str, ...] = ()) -> list[tuple[int, dict[str, str]]]:
    """Rows of a UTF-8 CSV as ``(line, row)``: the file line the row starts on (header = 1) and a dict of stripped
    strings; a missing required column is an ``InvalidInputError``.

    The csv module (not pandas) keeps every cell a string, so empty cells stay ``""`` and ids such as ``0001`` are
    not turned into numbers. Line numbers let messages point at a row, also when a quoted cell spans lines.
    """
    file = Path(path)
    text = read_text_utf8(file)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in (reader.fieldnames or [])]
        rows = []
        start = reader.line_num + 1
        for raw in reader:
            if None in raw:
                raise InvalidInputError(f"{file}:{reader.line_num}: more cells than header columns")
            rows.append((start, {(k or "").strip(): (v or "").strip() for k, v in raw.items()}))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise InvalidInputError(f"{file}: not a valid CSV ({exc})") from exc
    if not header:
        raise InvalidInputError(f"{file}: empty CSV (no header line)")
    missing = [c for c in required if c not in header]
    if missing:
        raise InvalidInputError(f"{file}: missing column(s) {missing}; found {header}")
    return rows


def index_unique(
    rows: list[tuple[int, dict[str, str]]],
    column: str,
    path: str | os.PathLike[str],
    key: Callable[[str], str] = str.strip,
) -> dict[str, dict[str, str]]:
    """Rows of :func:`read_csv_lines` keyed by ``key(row[column])``; two rows with one key are refused.

    A lookup table that silently kept the last of two rows would attach one report's text (or labels, or
    spacing) to a volume while the other row disappears; the error names both lines so the user can choose.
    """
    out: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    for line, row in rows:
        name = key(row[column])
        if name in first_line:
            raise InvalidInputError(
                f"{path}: {column} {row[column]!r} appears in two rows (lines {first_line[name]} and {line}); "
                "each value may have one row only: remove or merge the duplicate"
            )
        first_line[name] = line
        out[name] = row
    return out


def read_jsonl_lines(path: str | os.PathLike[str], what: str = "record") -> list[tuple[int, dict[str, Any]]]:
    """Records of a UTF-8 JSON-lines file as ``(line, object)``; blank lines are skipped.

    A line that is not valid JSON, or not a JSON object (``what`` names it in the message), is a
    ``DataValidationError`` naming ``file:line``.
    """
    file = Path(path)
    out: list[tuple[int, dict[str, Any]]] = []
    for line, raw in enumerate(read_text_utf8(file).splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataValidationError(f"{file}:{line}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise DataValidationError(f"{file}:{line}: a {what} must be a JSON object, got {type(record).__name__}")
        out.append((line, record))
    return out


def read_text_table(path: str | os.PathLike[str], id_column: str, text_column: str) -> dict[str, str]:
    """``{id: text}`` from a ``.csv`` or ``.jsonl`` file (e.g. reference or generated reports to score).

    Strict UTF-8; a row without either column, a line that is not a JSON object, or two rows for one id is an
    ``InvalidInputError`` naming the line, so a scored set never silently loses or swaps a report.
    """
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"{file}: {'is a folder, not a file' if file.is_dir() else 'file not found'}")
    rows: list[tuple[int, dict[str, str]]] = []
    if file.suffix == ".jsonl":
        for line, record in read_jsonl_lines(file, what="report record"):
            rows.append((line, {k: "" if v is None else str(v) for k, v in record.items()}))
    elif file.suffix == ".csv":
        rows = read_csv_lines(file)
    else:
        raise InvalidInputError(f"{file}: expected a .csv or .jsonl file")
    for line, row in rows:
        if id_column not in row or text_column not in row:
            raise InvalidInputError(f"{file}: line {line} lacks the {id_column!r} or {text_column!r} column")
    return {key: row[text_column] for key, row in index_unique(rows, id_column, file).items()}


def csv_header(path: Path) -> list[str]:
    """First line of a CSV split into column names ('' when unreadable); used only for detection."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            first = fh.readline()
    except OSError:
        return []
    return [c.strip() for c in next(csv.reader([first]), [])]


@dataclass(frozen=True)
class DetectedSource:
    """One layout root found under a source folder."""

    layout: str
    path: Path


def is_ct_rate_root(path: Path) -> bool:
    """A CT-RATE root holds ``radiology_text_reports`` (directly or under ``dataset/``)."""
    return any((path / sub / "radiology_text_reports").is_dir() for sub in (".", "dataset"))


def is_ctclip_csv_dir(path: Path) -> bool:
    """A folder holding CT-CLIP text-classifier CSVs (header starts ``AccessionNo,report_text``)."""
    return any(
        tuple(csv_header(p)[:2]) == CTCLIP_CSV_HEADER for p in path.glob("*.csv") if not p.name.startswith("map_")
    )


def _walk(root: Path) -> Iterator[tuple[Path, list[str], list[str], int]]:
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.parts) - base_depth
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _PRUNE_DIRS and not d.startswith(".") and not _VOLUME_DIR_RE.match(d) and depth < _MAX_DEPTH
        )
        yield here, dirnames, filenames, depth


def detect_layouts(source: str | os.PathLike[str]) -> list[DetectedSource]:
    """Every layout root under ``source`` (itself included), in a stable order.

    A CT-RATE root is not searched further (its volume tree is huge and holds nothing else); other folders are
    searched up to five levels deep. Raises ``InvalidInputError`` naming the expected layouts when nothing
    matches.
    """
    root = Path(source)
    if not root.exists():
        raise InvalidInputError(f"source {root} does not exist")
    if root.is_file():
        if root.name == FOLDER_CSV_NAME:
            return [DetectedSource("folder", root.parent)]
        if tuple(csv_header(root)[:2]) == CTCLIP_CSV_HEADER:
            return [DetectedSource("ctclip-csv", root.parent)]
        raise InvalidInputError(f"{root}: not a cases.csv or CT-CLIP classifier CSV; pass a folder instead")
    found: list[DetectedSource] = []
    for here, dirnames, filenames, _ in _walk(root):
        if is_ct_rate_root(here):
            found.append(DetectedSource("ct-rate", here))
            dirnames[:] = []
            continue
        if FOLDER_CSV_NAME in filenames:
            found.append(DetectedSource("folder", here))
        if any(f.endswith(".csv") for f in filenames) and is_ctclip_csv_dir(here):
            found.append(DetectedSource("ctclip-csv", here))
    if not found:
        raise InvalidInputError(describe_expected_layouts(root))
    return found


def describe_expected_layouts(root: Path) -> str:
    return (
        f"no corpus found under {root}. Expected one of:\n"
        f"  folder layout: a {FOLDER_CSV_NAME} (columns case_id, patient_id, split, volume, mask, mask_source, "
        "findings, impression, report_source, dataset) next to the NIfTI files it names;\n"
        "  CT-RATE layout: dataset/{train,valid}/train_<patient>/train_<patient>_<scan>/"
        "train_<patient>_<scan>_<recon>.nii.gz with dataset/radiology_text_reports/{train,validation}_reports.csv "
        "(and optionally dataset/multi_abnormality_labels/*_predicted_labels.csv, dataset/metadata/*_metadata.csv);\n"
        "  CT-CLIP classifier CSVs: train.csv / val.csv with columns AccessionNo, report_text and the 18 labels"
    )
