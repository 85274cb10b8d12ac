"""Readers for CT-RATE: the public volume release and the CT-CLIP text-classifier CSVs.

CT-RATE layout (names checked against the CT-CLIP code, ibrahimethemhamamci/CT-CLIP: ``data_preprocess/`` reads
``{train,validation}_metadata.csv`` with ``VolumeName, XYSpacing, ZSpacing, RescaleSlope, RescaleIntercept``;
the dataset classes read ``radiology_text_reports/*_reports.csv`` with ``VolumeName, Findings_EN,
Impressions_EN`` and ``multi_abnormality_labels/*_predicted_labels.csv``)::

    <root>/dataset/
        train/train_<patient>/train_<patient>_<scan>/train_<patient>_<scan>_<recon>.nii.gz
        valid/valid_<patient>/valid_<patient>_<scan>/valid_<patient>_<scan>_<recon>.nii.gz
        radiology_text_reports/{train,validation}_reports.csv
        multi_abnormality_labels/{train,valid}_predicted_labels.csv      (optional)
        metadata/{train,validation}_metadata.csv                         (optional)

The reader is tolerant: ``<root>`` may be the ``dataset`` folder itself, volume folders may be called
``train_fixed``/``valid_fixed`` (the re-released volumes; preferred when both exist), and the CSVs are found by
name pattern anywhere up to two levels below the root. Ids: case id = volume file name without extension
(``train_1_a_1``), patient id = ``train_1``. CT-RATE's ``valid`` part is the official held-out set and becomes
split ``test``; ``val_fraction`` carves a patient-level ``val`` split from ``train`` with a seeded permutation.

Raw values: the first CT-RATE release stored the scanner's raw values (no negatives, e.g. 0..4095) and kept the
DICOM ``RescaleSlope``/``RescaleIntercept`` only in the metadata CSV; the re-release stores Hounsfield units.
The reader copies slope/intercept into ``Case.extra["rescale"]``; :func:`needs_rescale` decides per volume:
``"auto"`` applies them only when the volume has no negative value and the intercept is negative (a chest CT in
HU always contains air below -500 HU, so HU volumes are never rescaled twice), ``"always"``/``"never"`` force it.
Ingest records the decision in ``Case.extra["rescale_applied"]`` and the preprocessing transforms apply it.

CT-CLIP text-classifier CSVs (``train.csv``/``val.csv``: ``AccessionNo, report_text`` + 18 labels, and
``map_<stem>_classifier.csv``: ``AccessionNo, NameinCTRATE``) give report-only cases. ``report_text`` joins
findings and impression with ``"`` (see :func:`ctrag.data.reports.split_joined_report`). The map names a CT-RATE
*scan* (``train_17051_a``) or says ``not in CT-RATE``; mapped rows take the CT-RATE patient id (``train_17051``),
others are their own patient (``ctclip_<accession>``). CT-CLIP split the rows by accession, not patient: two
patients of the shipped files have rows in both ``train.csv`` and ``val.csv``. With ``patient_level_split``
(default) such a patient's rows all move to the split holding most of them (ties: the earlier of
train/val/test) and ``extra["split_moved_from"]`` records it, so the corpus never leaks a patient across splits.
Note that some classifier *train* rows map to CT-RATE *valid* (held-out) scans; ingesting both sources together
therefore reports those patients as being in two splits.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctrag.data.case import SPLITS, Case, Corpus
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.readers import (
    CTCLIP_CSV_HEADER,
    SkippedCase,
    csv_header,
    index_unique,
    read_csv_lines,
    record_or_raise,
)
from ctrag.data.reports import clean_section, split_joined_report
from ctrag.errors import InvalidInputError

logger = logging.getLogger(__name__)

RescalePolicy = Literal["auto", "always", "never"]
RESCALE_POLICIES: tuple[str, ...] = ("auto", "always", "never")
CT_RATE_DATASET = "ct-rate"
CTCLIP_DATASET = "ct-rate-ctclip-classifier"
CT_RATE_LICENSE = "CC BY-NC-SA 4.0"
VOLUME_NAME_RE = re.compile(r"^(?P<part>train|valid)_(?P<patient>\d+)_(?P<scan>[a-z]+)_(?P<recon>\d+)\.nii(?:\.gz)?$")
SCAN_NAME_RE = re.compile(r"^(?P<patient>(?:train|valid)_\d+)(?:_[a-z]+)?(?:_\d+)?(?:\.nii(?:\.gz)?)?$")
NOT_IN_CT_RATE = "not in ct-rate"

_PART_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid"}
_REPORTS_RE = re.compile(r"^(train|valid|validation)_reports\.csv$", re.IGNORECASE)
_LABELS_RE = re.compile(r"^(train|valid|validation)_(?:predicted_)?labels\.csv$", re.IGNORECASE)
_METADATA_RE = re.compile(r"^(train|valid|validation)_metadata\.csv$", re.IGNORECASE)
_VOLUME_DIR_NAMES = {"train": ("train_fixed", "train"), "valid": ("valid_fixed", "valid", "validation")}


# --------------------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CTRateLayout:
    """Where the parts of a CT-RATE copy live; ``part`` keys are ``"train"`` and ``"valid"``."""

    root: Path
    volume_dirs: dict[str, Path] = field(default_factory=dict)
    reports: dict[str, Path] = field(default_factory=dict)
    labels: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, Path] = field(default_factory=dict)


def _expected_layout(root: Path) -> str:
    return (
        f"{root} is not a CT-RATE folder. Expected (names as in the public release):\n"
        "  dataset/train/train_<patient>/train_<patient>_<scan>/train_<patient>_<scan>_<recon>.nii.gz  "
        "(and dataset/valid/valid_<patient>/...; *_fixed folder names are accepted)\n"
        "  dataset/radiology_text_reports/train_reports.csv, validation_reports.csv  "
        "(VolumeName, Findings_EN, Impressions_EN)\n"
        "  optional: dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv, "
        "dataset/metadata/{train,validation}_metadata.csv"
    )


def _csv_files(base: Path, depth: int = 2) -> list[Path]:
    out: list[Path] = []
    level = [base]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            try:
                entries = sorted(folder.iterdir())
            except OSError:
                continue
            for entry in entries:
                if entry.is_file() and entry.suffix.lower() == ".csv":
                    out.append(entry)
                elif entry.is_dir() and not entry.name.startswith((".", "train_", "valid_")):
                    nxt.append(entry)
        level = nxt
    return out


def find_ct_rate_layout(root: str | os.PathLike[str]) -> CTRateLayout:
    """Locate volumes and CSVs of a CT-RATE copy; ``InvalidInputError`` describing the layout if none match."""
    base = Path(root).resolve()
    if not base.is_dir():
        raise InvalidInputError(_expected_layout(base))
    data_dir = base / "dataset" if (base / "dataset").is_dir() else base
    volume_dirs: dict[str, Path] = {}
    for part, names in _VOLUME_DIR_NAMES.items():
        for name in names:
            if (data_dir / name).is_dir():
                volume_dirs[part] = data_dir / name
                break
    reports: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    metadata: dict[str, Path] = {}
    for csv_path in _csv_files(data_dir):
        for pattern, table in ((_REPORTS_RE, reports), (_LABELS_RE, labels), (_METADATA_RE, metadata)):
            match = pattern.match(csv_path.name)
            if match:
                table.setdefault(_PART_ALIASES[match.group(1).lower()], csv_path)
    if not reports and not volume_dirs:
        raise InvalidInputError(_expected_layout(base))
    return CTRateLayout(data_dir, volume_dirs, reports, labels, metadata)


# --------------------------------------------------------------------------------------------------------------
# Helpers shared by both readers
# --------------------------------------------------------------------------------------------------------------


def patient_of_scan(name: str) -> str | None:
    """CT-RATE patient id (``train_17051``) of a volume or scan name, or None when it is not a CT-RATE name."""
    match = SCAN_NAME_RE.match(name.strip())
    return match.group("patient") if match else None


def _labels_from_row(row: dict[str, str]) -> tuple[int, ...]:
    values = []
    for name in CT_RATE_LABELS:
        cell = row.get(name, "")
        if cell not in {"0", "1", "0.0", "1.0"}:
            raise InvalidInputError(f"label {name!r} must be 0 or 1, got {cell!r}")
        values.append(int(float(cell)))
    return tuple(values)


def _parse_floats(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", text or "")]


def carve_val_split(cases: list[Case], fraction: float, seed: int) -> list[Case]:
    """Move a seeded, patient-level ``fraction`` of the ``train`` patients to ``val`` (deterministic).

    Patients are sorted before the permutation, so the result depends only on the set of patients and ``seed``.
    """
    if not 0.0 <= fraction < 1.0:
        raise InvalidInputError(f"val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return cases
    patients = sorted({c.patient_id for c in cases if c.split == "train"})
    rng = np.random.default_rng(seed)
    n_val = round(len(patients) * fraction)
    chosen = {patients[i] for i in rng.permutation(len(patients))[:n_val]}
    return [c.evolve(split="val") if c.split == "train" and c.patient_id in chosen else c for c in cases]


def needs_rescale(array: np.ndarray, rescale: dict[str, float] | None, policy: str = "auto") -> bool:
    """Should the metadata slope/intercept be applied to this stored array? (see the module docstring)"""
    if policy not in RESCALE_POLICIES:
        raise InvalidInputError(f"rescale policy must be one of {RESCALE_POLICIES}, got {policy!r}")
    if not rescale or policy == "never":
        return False
    if policy == "always":
        return True
    return float(np.min(array)) >= 0.0 and float(rescale.get("intercept", 0.0)) < 0.0


# --------------------------------------------------------------------------------------------------------------
# CT-RATE volumes
# --------------------------------------------------------------------------------------------------------------


def _index_by_volume(path: Path | None, required: tuple[str, ...]) -> dict[str, dict[str, str]]:
    if path is None:
        return {}
    return index_unique(read_csv_lines(path, ("VolumeName", *required)), "VolumeName", path, key=_volume_key)


def _volume_key(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", name.strip())


def _scan_volumes(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if VOLUME_NAME_RE.match(name):
                found.setdefault(_volume_key(name), Path(dirpath) / name)
    return found


def read_ct_rate(
    root: str | os.PathLike[str],
    *,
    parts: tuple[str, ...] = ("train", "valid"),
    val_fraction: float = 0.0,
    seed: int = 0,
    rescale: RescalePolicy = "auto",
    include_report_only: bool = False,
    errors: list[SkippedCase] | None = None,
) -> list[Case]:
    """Cases of a CT-RATE copy: one per volume found (plus report-only rows if ``include_report_only``).

    A volume without a report row still becomes a case (``report_source="radiologist"`` with empty text) so that
    ingest lists it as "missing report" instead of dropping it.
    """
    if rescale not in RESCALE_POLICIES:
        raise InvalidInputError(f"rescale must be one of {RESCALE_POLICIES}, got {rescale!r}")
    layout = find_ct_rate_layout(root)
    unknown = [p for p in parts if p not in _VOLUME_DIR_NAMES]
    if unknown:
        raise InvalidInputError(f"unknown CT-RATE part(s) {unknown}; parts are train, valid")
    if not include_report_only and not any(p in layout.volume_dirs for p in parts):
        raise InvalidInputError(
            f"no CT-RATE volume folder for {list(parts)} under {layout.root} "
            f"(found reports for {sorted(layout.reports)}); to ingest the reports alone, run `ctrag ingest "
            "--include-report-only` (Python: include_report_only=True).\n" + _expected_layout(layout.root)
        )
    cases: list[Case] = []
    for part in parts:
        reports = _index_by_volume(layout.reports.get(part), ("Findings_EN", "Impressions_EN"))
        labels = _index_by_volume(layout.labels.get(part), CT_RATE_LABELS)
        metadata = _index_by_volume(layout.metadata.get(part), ())
        volumes = _scan_volumes(layout.volume_dirs[part]) if part in layout.volume_dirs else {}
        names = sorted(set(volumes) | (set(reports) if include_report_only else set()))
        for name in names:
            try:
                cases.append(
                    _ct_rate_case(
                        name, part, volumes.get(name), reports.get(name), labels.get(name), metadata.get(name), rescale
                    )
                )
            except InvalidInputError as exc:
                record_or_raise(errors, SkippedCase(name, str(layout.root), str(exc)))
    return carve_val_split(cases, val_fraction, seed)


def _ct_rate_case(
    name: str,
    part: str,
    volume: Path | None,
    report: dict[str, str] | None,
    label_row: dict[str, str] | None,
    meta_row: dict[str, str] | None,
    rescale: str,
) -> Case:
    patient = patient_of_scan(name)
    if patient is None:
        raise InvalidInputError(f"volume name {name!r} does not follow <part>_<patient>_<scan>_<recon>")
    extra: dict[str, Any] = {"ct_rate_part": part, "license": CT_RATE_LICENSE, "rescale_policy": rescale}
    if report is not None:
        for column, key in (("ClinicalInformation_EN", "clinical_information"), ("Technique_EN", "technique")):
            value = clean_section(report.get(column, ""))
            if value:
                extra[key] = value
    if meta_row is not None:
        slope, intercept = (
            _parse_floats(meta_row.get("RescaleSlope", "")),
            _parse_floats(meta_row.get("RescaleIntercept", "")),
        )
        if slope and intercept:
            extra["rescale"] = {"slope": slope[0], "intercept": intercept[0]}
        xy, z = _parse_floats(meta_row.get("XYSpacing", "")), _parse_floats(meta_row.get("ZSpacing", ""))
        if xy and z:
            extra["metadata_spacing"] = [xy[0], xy[1] if len(xy) > 1 else xy[0], z[0]]
    return Case(
        case_id=name,
        patient_id=patient,
        split="train" if part == "train" else "test",
        report_findings=clean_section(report.get("Findings_EN", "")) if report else "",
        report_impression=clean_section(report.get("Impressions_EN", "")) if report else "",
        report_source="radiologist",
        labels=_labels_from_row(label_row) if label_row is not None else None,
        volume_path=str(volume.resolve()) if volume is not None else None,
        dataset=CT_RATE_DATASET,
        extra=extra,
    )


# --------------------------------------------------------------------------------------------------------------
# CT-CLIP text-classifier CSVs
# --------------------------------------------------------------------------------------------------------------


def _split_of_csv(path: Path) -> str:
    stem = path.stem.lower()
    for token, split in (("train", "train"), ("valid", "val"), ("val", "val"), ("test", "test")):
        if token in stem:
            return split
    raise InvalidInputError(f"{path}: cannot tell the split from the file name (expected train/val/test in it)")


def _map_for(csv_path: Path) -> dict[str, str]:
    candidates = [
        csv_path.with_name(f"map_{csv_path.stem}_classifier.csv"),
        *sorted(csv_path.parent.glob(f"map_*{csv_path.stem}*.csv")),
    ]
    for cand in candidates:
        if cand.is_file():
            rows = index_unique(read_csv_lines(cand, ("AccessionNo", "NameinCTRATE")), "AccessionNo", cand)
            return {accession: r["NameinCTRATE"] for accession, r in rows.items()}
    return {}


def ctclip_csv_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The report CSVs (not the maps) of a CT-CLIP classifier folder, or the file itself."""
    path = Path(folder)
    if path.is_file():
        return [path]
    files = [
        p
        for p in sorted(path.glob("*.csv"))
        if not p.name.startswith("map_") and tuple(csv_header(p)[:2]) == CTCLIP_CSV_HEADER
    ]
    if not files:
        raise InvalidInputError(
            f"no CT-CLIP classifier CSV in {path} (expected train.csv/val.csv with columns "
            f"{', '.join(CTCLIP_CSV_HEADER)} and the 18 CT-RATE labels)"
        )
    return files


def read_ctclip_classifier(
    folder: str | os.PathLike[str],
    *,
    patient_level_split: bool = True,
    errors: list[SkippedCase] | None = None,
) -> list[Case]:
    """Report-only cases from the CT-CLIP text-classifier CSVs (see the module docstring)."""
    cases: list[Case] = []
    for csv_path in ctclip_csv_files(folder):
        split = _split_of_csv(csv_path)
        rows = read_csv_lines(csv_path, (*CTCLIP_CSV_HEADER, *CT_RATE_LABELS))
        mapping = _map_for(csv_path)
        for lineno, row in rows:
            accession = row["AccessionNo"]
            try:
                cases.append(_ctclip_case(row, split, mapping.get(accession, "")))
            except InvalidInputError as exc:
                record_or_raise(errors, SkippedCase(f"ctclip_{accession}", f"{csv_path}:{lineno}", str(exc)))
    return _unify_patient_splits(cases) if patient_level_split else cases


def _ctclip_case(row: dict[str, str], split: str, mapped: str) -> Case:
    accession = row["AccessionNo"]
    if not accession:
        raise InvalidInputError("empty AccessionNo")
    sections = split_joined_report(row["report_text"])
    extra: dict[str, Any] = {"accession": accession, "section_split": sections.method, "license": CT_RATE_LICENSE}
    patient = None
    if mapped and mapped.strip().lower() != NOT_IN_CT_RATE:
        patient = patient_of_scan(mapped)
        if patient is None:
            raise InvalidInputError(f"map names {mapped!r}, which is not a CT-RATE scan name")
        extra["ct_rate_volume"] = mapped.strip()
    return Case(
        case_id=f"ctclip_{accession}",
        patient_id=patient or f"ctclip_{accession}",
        split=split,
        report_findings=sections.findings,
        report_impression=sections.impression,
        report_source="radiologist",
        labels=_labels_from_row(row),
        dataset=CTCLIP_DATASET,
        extra=extra,
    )


def _unify_patient_splits(cases: list[Case]) -> list[Case]:
    by_patient: dict[str, Counter[str]] = defaultdict(Counter)
    for case in cases:
        by_patient[case.patient_id][case.split] += 1
    target = {}
    for patient, counts in by_patient.items():
        if len(counts) > 1:
            target[patient] = max(counts, key=lambda s: (counts[s], -SPLITS.index(s)))
    if target:
        logger.info("CT-CLIP CSVs: %d patient(s) had rows in several splits; moved to one split each", len(target))
    out = []
    for case in cases:
        dest = target.get(case.patient_id)
        if dest is not None and dest != case.split:
            case = case.evolve(split=dest, extra={**case.extra, "split_moved_from": case.split})
        out.append(case)
    return out


class CTRateCorpus(Corpus):
    """A CT-RATE copy as a :class:`~ctrag.data.case.Corpus` (``split=None`` keeps every split).

    Reads the folder once (no download, no volume loading); bad rows raise. Use :func:`ctrag.data.ingest.ingest`
    to validate volumes and write a manifest.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        *,
        val_fraction: float = 0.0,
        seed: int = 0,
        rescale: RescalePolicy = "auto",
        include_report_only: bool = False,
    ) -> None:
        if split is not None and split not in SPLITS:
            raise InvalidInputError(f"unknown split {split!r}; splits are {SPLITS}")
        cases = read_ct_rate(
            root, val_fraction=val_fraction, seed=seed, rescale=rescale, include_report_only=include_report_only
        )
        super().__init__([c for c in cases if split is None or c.split == split], root)
