"""Ingest: read corpus folders, validate every case, write the manifest and a validation report.

``ingest(["sample_data"], "corpus/")`` detects the layouts under each source (:func:`ctrag.data.readers.
detect_layouts`), reads the cases, and checks each one. A case that fails a check is *skipped and listed with
its reason*; the rest are still validated. Checks, in order:

1. corpus level (before any volume is read): duplicate case ids (the first occurrence is kept), a patient
   with cases in more than one split (all of that patient's cases are skipped: train/test leakage);
2. text: a case needs text unless it has a volume and says ``report_source="none"`` (a CT without text may
   still train volume models or be searched by image; a report-only or mask-only case without text is useless);
   text with ``report_source="none"``, or a ``radiologist``/``annotation-derived`` source with no text, is
   inconsistent; a report larger than ``max_report_bytes`` (UTF-8; default
   :data:`ctrag.data.report_text.MAX_REPORT_BYTES`, the limit search and generate apply too) is refused, as is
   text with NUL bytes;
3. volume: readable, not truncated, 3-D, valid affine (``ctrag.data.nifti.load_volume``), values in Hounsfield
   units (``check_ct_intensity``; CT-RATE raw values are rescaled first when the metadata says so);
4. mask: known ``mask_source`` (decides the allowed label ids, :data:`MASK_LABEL_SETS`), integer labels
   within that set, and on the volume's grid (same shape and affine).

Per volume case the manifest records shape, spacing, orientation and HU p1/p99 (``Case.extra``); per mask the
labels present. Outputs, each written atomically into ``out``: ``manifest.jsonl`` (``Corpus.save``),
``validation_report.json`` and ``validation_report.md``. When any case was skipped and ``allow_skips`` is
false, ingest raises ``DataValidationError`` and leaves an existing manifest untouched; the report of the
rejected run goes to ``validation_report.rejected.{json,md}`` so the reasons can be read.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.data.case import MANIFEST_NAME, SPLITS, Case, Corpus
from ctrag.data.ct_rate import RESCALE_POLICIES, needs_rescale, read_ct_rate, read_ctclip_classifier
from ctrag.data.folder import read_folder
from ctrag.data.labels import COARSE_LABELS, totalseg_v2_labels
from ctrag.data.nifti import Volume, check_ct_intensity, check_label_mask, check_same_grid, load_volume
from ctrag.data.readers import LAYOUTS, DetectedSource, SkippedCase, detect_layouts
from ctrag.data.report_text import MAX_REPORT_BYTES, check_report_text
from ctrag.errors import DataValidationError, InvalidInputError
from ctrag.utils.atomic import atomic_write_text
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

REPORT_JSON = "validation_report.json"
REPORT_MD = "validation_report.md"
REJECTED_JSON = "validation_report.rejected.json"
REJECTED_MD = "validation_report.rejected.md"

_TOTALSEG_IDS = frozenset(totalseg_v2_labels())
MASK_LABEL_SETS: dict[str, frozenset[int]] = {
    "totalsegmentator": _TOTALSEG_IDS,
    "totalsegmentator-total": _TOTALSEG_IDS,
    "totalsegmentator-total-fast": _TOTALSEG_IDS,
    "totalsegmentator-total-subset": _TOTALSEG_IDS,
    "coarse": frozenset(COARSE_LABELS),
    "ctrag-classical": frozenset(COARSE_LABELS),
}
"""``mask_source`` -> allowed label ids (0 = background is always allowed)."""

VALIDATE_STAGE = "validate"
"""``progress(VALIDATE_STAGE, done, total)`` is called after each case is validated (the case id is logged)."""


@dataclass(frozen=True)
class IngestWarning:
    case_id: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"case_id": self.case_id, "message": self.message}


@dataclass
class IngestResult:
    """What ingest kept, skipped and wrote."""

    corpus: Corpus
    skipped: list[SkippedCase]
    warnings: list[IngestWarning]
    sources: list[DetectedSource]
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.skipped


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def collect_cases(
    sources: Sequence[str | os.PathLike[str]],
    *,
    layout: str = "auto",
    val_fraction: float = 0.0,
    seed: int = 0,
    rescale: str = "auto",
    include_report_only: bool = False,
) -> tuple[list[Case], list[SkippedCase], list[DetectedSource]]:
    """Read every source (detecting layouts when ``layout="auto"``); file-level problems raise.

    ``include_report_only`` makes CT-RATE report rows without a volume cases of their own (``--include-report-only``).
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise InvalidInputError(f"unknown layout {layout!r}; choose auto or one of {list(LAYOUTS)}")
    if not sources:
        raise InvalidInputError("no source folder given")
    detected: list[DetectedSource] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise InvalidInputError(f"source {path} does not exist")
        if layout == "auto":
            detected.extend(detect_layouts(path))
        else:
            detected.append(DetectedSource(layout, path))
    cases: list[Case] = []
    skipped: list[SkippedCase] = []
    for found in detected:
        if found.layout == "folder":
            cases.extend(read_folder(found.path, errors=skipped))
        elif found.layout == "ct-rate":
            cases.extend(
                read_ct_rate(
                    found.path,
                    val_fraction=val_fraction,
                    seed=seed,
                    rescale=rescale,  # type: ignore[arg-type]
                    include_report_only=include_report_only,
                    errors=skipped,
                )
            )
        else:
            cases.extend(read_ctclip_classifier(found.path, errors=skipped))
    return cases, skipped, detected


def check_corpus_consistency(cases: Sequence[Case]) -> tuple[list[Case], list[SkippedCase]]:
    """Drop duplicate ids (keeping the first) and every case of a patient that spans several splits."""
    kept: list[Case] = []
    skipped: list[SkippedCase] = []
    first: dict[str, Case] = {}
    for case in cases:
        if case.case_id in first:
            other = first[case.case_id]
            skipped.append(
                SkippedCase(
                    case.case_id,
                    case.dataset or "-",
                    f"duplicate case id {case.case_id!r} (already used by a {other.dataset or 'previous'} case "
                    f"of patient {other.patient_id}); case ids must be unique across all sources",
                )
            )
            continue
        first[case.case_id] = case
        kept.append(case)
    splits: dict[str, set[str]] = defaultdict(set)
    for case in kept:
        splits[case.patient_id].add(case.split)
    leaking = {p for p, s in splits.items() if len(s) > 1}
    if not leaking:
        return kept, skipped
    out = []
    for case in kept:
        if case.patient_id in leaking:
            members = sorted(f"{c.case_id} ({c.split})" for c in kept if c.patient_id == case.patient_id)
            skipped.append(
                SkippedCase(
                    case.case_id,
                    case.dataset or "-",
                    f"patient {case.patient_id} has cases in several splits ({', '.join(members)}); "
                    "a patient must stay in one split, otherwise test data leaks into training",
                )
            )
        else:
            out.append(case)
    return out, skipped


# --------------------------------------------------------------------------------------------------------------
# Per-case validation
# --------------------------------------------------------------------------------------------------------------


def check_report(case: Case, max_report_bytes: int = MAX_REPORT_BYTES) -> None:
    """Text rules of the module docstring; raises ``DataValidationError``."""
    text = case.report_text
    if not text:
        if case.volume_path is None:
            kind = "mask-only" if case.mask_path else "report-only"
            raise DataValidationError(f"{kind} case has no report text (empty findings and impression)")
        if case.report_source != "none":
            raise DataValidationError(
                f"missing report: report_source is {case.report_source!r} but findings and impression are empty "
                "(use report_source=none for a CT without text)"
            )
        return
    if case.report_source == "none":
        raise DataValidationError("report text is given but report_source is 'none'; say where the text came from")
    try:
        check_report_text(
            text,
            what="report",
            max_bytes=max_report_bytes,
            size_hint="; raise the limit with --max-report-bytes if this is a genuine report",
        )
    except InvalidInputError as exc:
        raise DataValidationError(str(exc)) from None


def _apply_rescale(volume: Volume, case: Case) -> tuple[Volume, bool]:
    rescale = case.extra.get("rescale")
    policy = str(case.extra.get("rescale_policy", "never"))
    if not needs_rescale(volume.array, rescale, policy):
        return volume, False
    assert rescale is not None
    arr = volume.array.astype(np.float32) * float(rescale["slope"]) + float(rescale["intercept"])
    return Volume(arr, volume.affine, volume.path, dict(volume.meta)), True


def validate_case(case: Case, *, max_report_bytes: int = MAX_REPORT_BYTES) -> tuple[Case, list[IngestWarning]]:
    """Validate one case; return it with geometry and intensity facts recorded, or raise ``DataValidationError``."""
    check_report(case, max_report_bytes)
    warnings: list[IngestWarning] = []
    extra = dict(case.extra)
    changes: dict[str, Any] = {}
    volume: Volume | None = None
    if case.volume_path is not None:
        volume = load_volume(case.volume_path)
        volume, rescaled = _apply_rescale(volume, case)
        if "rescale" in extra:
            extra["rescale_applied"] = rescaled
        p1, p99 = check_ct_intensity(volume)
        changes["spacing"] = tuple(round(s, 6) for s in volume.spacing)
        changes["shape"] = tuple(int(s) for s in volume.shape)
        extra.update(orientation=volume.orientation, hu_p1=round(p1, 1), hu_p99=round(p99, 1))
        meta_spacing = extra.get("metadata_spacing")
        if meta_spacing is not None and not np.allclose(volume.spacing, meta_spacing, rtol=0.01):
            warnings.append(
                IngestWarning(
                    case.case_id,
                    f"NIfTI spacing {tuple(round(s, 4) for s in volume.spacing)} differs from the metadata CSV "
                    f"spacing {tuple(meta_spacing)}; the NIfTI affine is used",
                )
            )
    if case.mask_path is not None:
        source = case.mask_source or ""
        if source not in MASK_LABEL_SETS:
            raise DataValidationError(f"unknown mask_source {source!r}; known: {sorted(MASK_LABEL_SETS)}")
        mask = load_volume(case.mask_path)
        labels = check_label_mask(mask, allowed=set(MASK_LABEL_SETS[source]))
        if not labels:
            raise DataValidationError(f"mask {case.mask_path} is empty (no label other than 0)")
        if volume is not None:
            check_same_grid(mask, volume)
        else:
            extra["mask_grid"] = {
                "shape": list(mask.shape),
                "spacing": [round(s, 6) for s in mask.spacing],
                "orientation": mask.orientation,
            }
        extra["mask_labels"] = labels
    return case.evolve(extra=extra, **changes), warnings


# --------------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------------


def _kind(case: Case) -> str:
    if case.volume_path is not None:
        return "volume+mask" if case.mask_path else "volume"
    return "mask-only" if case.mask_path else "report-only"


def build_report(
    corpus: Corpus,
    skipped: Sequence[SkippedCase],
    warnings: Sequence[IngestWarning],
    sources: Sequence[DetectedSource],
    options: dict[str, Any],
) -> dict[str, Any]:
    """The JSON-ready validation report: counts per split/dataset/report source/kind, skipped and warnings."""

    def counts(key: Callable[[Case], str]) -> dict[str, int]:
        return dict(sorted(Counter(key(c) for c in corpus).items()))

    by_split = {s: 0 for s in SPLITS}
    by_split.update(counts(lambda c: c.split))
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": [{"layout": s.layout, "path": str(s.path)} for s in sources],
        "options": options,
        "n_cases": len(corpus),
        "n_skipped": len(skipped),
        "counts": {
            "split": by_split,
            "dataset": counts(lambda c: c.dataset or "-"),
            "report_source": counts(lambda c: c.report_source),
            "kind": counts(_kind),
            "split_by_dataset": {
                ds: dict(sorted(Counter(c.split for c in corpus if (c.dataset or "-") == ds).items()))
                for ds in sorted({c.dataset or "-" for c in corpus})
            },
        },
        "volumes": [
            {
                "case_id": c.case_id,
                "shape": list(c.shape) if c.shape else None,
                "spacing": list(c.spacing) if c.spacing else None,
                "orientation": c.extra.get("orientation"),
                "hu_p1": c.extra.get("hu_p1"),
                "hu_p99": c.extra.get("hu_p99"),
                "mask_labels": len(c.extra.get("mask_labels", [])),
            }
            for c in corpus
            if c.volume_path is not None
        ],
        "skipped": [s.to_dict() for s in skipped],
        "warnings": [w.to_dict() for w in warnings],
    }


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def render_markdown(report: dict[str, Any], title: str = "ctrag ingest: validation report") -> str:
    """Readable form of :func:`build_report` output."""
    c = report["counts"]
    lines = [
        f"# {title}",
        "",
        f"Created {report['created']}. Cases kept: **{report['n_cases']}**, skipped: **{report['n_skipped']}**.",
        "",
        "## Sources",
        "",
    ]
    lines += _md_table(["layout", "path"], [(s["layout"], s["path"]) for s in report["sources"]])
    for key, name in (("split", "Split"), ("dataset", "Dataset"), ("report_source", "Report source"), ("kind", "Kind")):
        lines += ["", f"## Cases per {name.lower()}", ""]
        lines += _md_table([name, "cases"], list(c[key].items()))
    lines += ["", "## Splits per dataset", ""]
    lines += _md_table(
        ["dataset", *SPLITS], [(ds, *(v.get(s, 0) for s in SPLITS)) for ds, v in c["split_by_dataset"].items()]
    )
    lines += ["", "## Skipped cases", ""]
    if report["skipped"]:
        lines += _md_table(
            ["case", "source", "reason"], [(s["case_id"], s["source"], s["reason"]) for s in report["skipped"]]
        )
    else:
        lines.append("None.")
    lines += ["", "## Warnings", ""]
    if report["warnings"]:
        lines += _md_table(["case", "warning"], [(w["case_id"], w["message"]) for w in report["warnings"]])
    else:
        lines.append("None.")
    if report["volumes"]:
        lines += ["", "## Volumes", ""]
        lines += _md_table(
            ["case", "shape", "spacing (mm)", "orientation", "HU p1", "HU p99", "mask labels"],
            [
                (
                    v["case_id"],
                    "x".join(map(str, v["shape"] or [])),
                    "x".join(f"{s:g}" for s in v["spacing"] or []),
                    v["orientation"],
                    v["hu_p1"],
                    v["hu_p99"],
                    v["mask_labels"],
                )
                for v in report["volumes"]
            ],
        )
    return "\n".join(lines) + "\n"


def _summarise_skips(skipped: Sequence[SkippedCase], limit: int = 20) -> str:
    lines = [f"  - {s.case_id} [{s.source}]: {s.reason}" for s in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------


def ingest(
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    layout: str = "auto",
    allow_skips: bool = False,
    val_fraction: float = 0.0,
    seed: int = 0,
    rescale: str = "auto",
    max_report_bytes: int = MAX_REPORT_BYTES,
    include_report_only: bool = False,
    progress: ProgressFn | None = None,
) -> IngestResult:
    """Read, validate and write a corpus (see the module docstring for the checks and outputs).

    Raises ``InvalidInputError`` for file-level problems (nothing is written) and ``DataValidationError`` when
    cases were skipped and ``allow_skips`` is false (the previous manifest in ``out`` is left as it was).
    ``progress("validate", done, total)`` is called after each case is checked.
    """
    if max_report_bytes <= 0:
        raise InvalidInputError(f"max_report_bytes must be positive, got {max_report_bytes}")
    if rescale not in RESCALE_POLICIES:
        raise InvalidInputError(f"rescale must be one of {list(RESCALE_POLICIES)}, got {rescale!r}")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"--out {out_dir} exists and is not a folder")
    options = {
        "layout": layout,
        "allow_skips": allow_skips,
        "val_fraction": val_fraction,
        "seed": seed,
        "rescale": rescale,
        "max_report_bytes": max_report_bytes,
        "include_report_only": include_report_only,
    }
    cases, skipped, detected = collect_cases(
        sources,
        layout=layout,
        val_fraction=val_fraction,
        seed=seed,
        rescale=rescale,
        include_report_only=include_report_only,
    )
    cases, corpus_skips = check_corpus_consistency(cases)
    skipped.extend(corpus_skips)
    valid: list[Case] = []
    warnings: list[IngestWarning] = []
    for i, case in enumerate(cases):
        try:
            checked, case_warnings = validate_case(case, max_report_bytes=max_report_bytes)
            valid.append(checked)
            warnings.extend(case_warnings)
        except InvalidInputError as exc:
            skipped.append(SkippedCase(case.case_id, case.dataset or "-", str(exc)))
        logger.debug("validated %s (%d/%d)", case.case_id, i + 1, len(cases))
        if progress is not None:
            progress(VALIDATE_STAGE, i + 1, len(cases))
    corpus = Corpus(valid, root=out_dir)
    report = build_report(corpus, skipped, warnings, detected, options)
    result = IngestResult(corpus, skipped, warnings, detected, out_dir, report=report)
    if skipped and not allow_skips:
        result.written = _write_reports(out_dir, report, REJECTED_JSON, REJECTED_MD, "ctrag ingest: REJECTED run")
        raise DataValidationError(
            f"{len(skipped)} case(s) failed validation, so nothing was ingested into {out_dir} "
            f"(an existing manifest there is unchanged; details in {out_dir / REJECTED_MD}); "
            f"fix them or pass --allow-skips to ingest the other {len(valid)}:\n{_summarise_skips(skipped)}"
        )
    if not valid:
        raise DataValidationError(f"no valid case found in {[str(s) for s in sources]}")
    written = _write_reports(out_dir, report, REPORT_JSON, REPORT_MD)
    written.append(corpus.save(out_dir / MANIFEST_NAME))
    for stale in (REJECTED_JSON, REJECTED_MD):
        (out_dir / stale).unlink(missing_ok=True)
    result.written = written
    logger.info("ingested %d case(s) into %s (%d skipped)", len(valid), out_dir, len(skipped))
    return result


def _write_reports(
    out_dir: Path, report: dict[str, Any], json_name: str, md_name: str, title: str | None = None
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / json_name, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / md_name, render_markdown(report, title or "ctrag ingest: validation report"))
    return [out_dir / json_name, out_dir / md_name]
