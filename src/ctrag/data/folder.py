"""Plain-folder corpora: NIfTI files described by a ``cases.csv``.

Format of ``cases.csv`` (UTF-8, one row per case, header required; paths relative to the CSV's folder or
absolute):

=================  ==========================================================================================
column             meaning
=================  ==========================================================================================
``case_id``        unique id of the case (required, non-empty)
``patient_id``     patient the case belongs to; all cases of a patient must share a split (required)
``split``          ``train``, ``val`` or ``test`` (required)
``volume``         CT volume (NIfTI, Hounsfield units); empty for a report-only or mask-only case
``mask``           label mask (NIfTI) on the volume's grid; empty when none
``mask_source``    where the mask came from; decides the allowed label ids (see ``MASK_LABEL_SETS`` in
                   :mod:`ctrag.data.ingest`), e.g. ``totalsegmentator-total``; required when ``mask`` is given
``findings``       report findings (free text)
``impression``     report impression (free text)
``report_source``  ``radiologist``, ``annotation-derived`` (text written from annotations, not a report) or
                   ``none`` (no text); required when any text is given, defaults to ``none`` otherwise
``dataset``        dataset name (free text, e.g. ``lidc-idri``)
18 label columns   optional: the CT-RATE abnormality names (``ctrag.data.labels.CT_RATE_LABELS``) with 0/1;
                   when present all 18 must be columns; a row with all 18 cells empty has no labels
anything else      kept in ``Case.extra`` as strings (empty cells are left out), e.g. ``license``
=================  ==========================================================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ctrag.data.case import Case
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.readers import FOLDER_CSV_NAME, SkippedCase, read_csv_lines, record_or_raise
from ctrag.errors import InvalidInputError

REQUIRED_COLUMNS: tuple[str, ...] = ("case_id", "patient_id", "split")
KNOWN_COLUMNS: tuple[str, ...] = (
    "case_id",
    "patient_id",
    "split",
    "volume",
    "mask",
    "mask_source",
    "findings",
    "impression",
    "report_source",
    "dataset",
)


def _resolve(base: Path, value: str) -> str | None:
    if not value:
        return None
    path = Path(value)
    return str(path if path.is_absolute() else (base / path).resolve())


def _parse_labels(row: dict[str, str]) -> tuple[int, ...] | None:
    cells = [row.get(name, "") for name in CT_RATE_LABELS]
    if all(c == "" for c in cells):
        return None
    bad = [name for name, c in zip(CT_RATE_LABELS, cells, strict=True) if c not in {"0", "1", "0.0", "1.0"}]
    if bad:
        raise InvalidInputError(f"label columns must all be 0/1 or all empty; bad values for {bad}")
    return tuple(int(float(c)) for c in cells)


def row_to_case(row: dict[str, str], base: Path) -> Case:
    """Build a ``Case`` from one ``cases.csv`` row; raises ``InvalidInputError`` naming the problem."""
    case_id = row.get("case_id", "")
    if not case_id:
        raise InvalidInputError("empty case_id")
    if not row.get("patient_id"):
        raise InvalidInputError("empty patient_id")
    findings, impression = row.get("findings", ""), row.get("impression", "")
    report_source = row.get("report_source", "")
    if not report_source:
        if findings or impression:
            raise InvalidInputError("report_source is required when findings or impression are given")
        report_source = "none"
    mask = _resolve(base, row.get("mask", ""))
    if mask is not None and not row.get("mask_source"):
        raise InvalidInputError("mask_source is required when a mask is given")
    extra: dict[str, Any] = {
        k: v for k, v in row.items() if k not in KNOWN_COLUMNS and k not in CT_RATE_LABELS and k and v != ""
    }
    return Case(
        case_id=case_id,
        patient_id=row["patient_id"],
        split=row.get("split", ""),
        report_findings=findings,
        report_impression=impression,
        report_source=report_source,
        labels=_parse_labels(row),
        volume_path=_resolve(base, row.get("volume", "")),
        mask_path=mask,
        mask_source=row.get("mask_source") or None,
        dataset=row.get("dataset", ""),
        extra=extra,
    )


def read_folder(path: str | os.PathLike[str], errors: list[SkippedCase] | None = None) -> list[Case]:
    """Cases of a folder corpus (``path`` is the folder or its ``cases.csv``).

    A bad row is appended to ``errors`` as a :class:`SkippedCase` when a list is given; otherwise the first bad
    row raises ``InvalidInputError``. A file-level problem (not UTF-8, missing columns, partial label columns)
    always raises.
    """
    csv_path = Path(path)
    if csv_path.is_dir():
        csv_path = csv_path / FOLDER_CSV_NAME
    if not csv_path.is_file():
        raise InvalidInputError(f"no {FOLDER_CSV_NAME} at {csv_path}")
    rows = read_csv_lines(csv_path, REQUIRED_COLUMNS)
    header = set(rows[0][1]) if rows else set()
    present = [n for n in CT_RATE_LABELS if n in header]
    if present and len(present) != len(CT_RATE_LABELS):
        missing = [n for n in CT_RATE_LABELS if n not in header]
        raise InvalidInputError(f"{csv_path}: has {len(present)} of the 18 CT-RATE label columns; missing {missing}")
    base = csv_path.parent.resolve()
    cases = []
    for lineno, row in rows:
        try:
            cases.append(row_to_case(row, base))
        except InvalidInputError as exc:
            record_or_raise(
                errors, SkippedCase(row.get("case_id") or f"<line {lineno}>", f"{csv_path}:{lineno}", str(exc))
            )
    return cases
