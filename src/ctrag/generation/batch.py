"""Many reports -> many CTs: the report table, per-report seeds, resumable output folders, batched sampling.

A table of reports (CSV: an id column, a report text column, optionally a seed column) becomes one output folder
per report, ``OUT/<id>/ct.nii.gz`` with its provenance JSON and PNG written as one unit by
``ctrag.generation.output.save_result``. The design choices that make long runs safe to stop and restart:

* a report's seed is a function of the base seed and its id alone (or given in the table), so its CT does not
  depend on the batch it was sampled in, on the batch size, or on which reports were already done;
* a report is done when its provenance JSON parses, names its CT file, that file exists, and the recorded report
  hash and seed match the table; anything less (a truncated JSON, a missing CT, an edited report) is redone;
* a report that fails (bad text, retrieval, writing) is recorded and the run goes on with the rest.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctrag.data.report_text import MAX_REPORT_BYTES, check_report_text
from ctrag.errors import CtragError, InvalidInputError
from ctrag.utils.atomic import atomic_write_text
from ctrag.utils.hashing import sha256_text
from ctrag.utils.progress import ProgressFn

if TYPE_CHECKING:
    from ctrag.generation.pipeline import GenerationPipeline

ID_COLUMN = "id"
TEXT_COLUMN = "report_text"
SEED_COLUMN = "seed"
OUTPUT_NAME = "ct.nii.gz"
PROVENANCE_NAME = "ct.provenance.json"
SUMMARY_NAME = "batch_summary.json"
REPORTS_STAGE = "reports"
"""The ``ProgressFn`` stage counting finished (written, skipped or failed) reports."""

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Ids become folder names: letters, digits, ``.``, ``_``, ``-``; no separators, no leading dot, at most 128."""


@dataclass(frozen=True)
class ReportRequest:
    """One row of the report table: the output folder's name, the report, and the seed of its noise."""

    id: str
    text: str
    seed: int
    seed_source: str
    """``"column"`` (given in the table) or ``"derived"`` (from the base seed and the id)."""


@dataclass
class BatchSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"written": self.written, "skipped": self.skipped, "failed": self.failed}


def derive_seed(base_seed: int, report_id: str) -> int:
    """A 60-bit seed from the base seed and the id: stable across runs, machines and batch compositions."""
    return int(sha256_text(f"ctrag-seed:{int(base_seed)}:{report_id}")[:15], 16)


def read_report_table(
    path: str | os.PathLike[str],
    *,
    base_seed: int = 0,
    id_column: str = ID_COLUMN,
    text_column: str = TEXT_COLUMN,
    seed_column: str = SEED_COLUMN,
) -> list[ReportRequest]:
    """Read and validate the whole table before any model is loaded; every problem is an ``InvalidInputError``.

    Ids are kept as text (``0012`` stays ``0012``); the seed column is optional, and an empty cell in it falls
    back to the derived seed.
    """
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"--reports-csv {file} does not exist or is not a file")
    if base_seed < 0:
        raise InvalidInputError(f"--seed must be >= 0, got {base_seed}")
    try:
        with file.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = list(rows[0].keys()) if rows else []
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"--reports-csv {file} is not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        if "field larger" in str(exc):
            raise InvalidInputError(
                f"--reports-csv {file} has a field over the size limit of {csv.field_size_limit()} characters "
                f"(reports are limited to {MAX_REPORT_BYTES} UTF-8 bytes)"
            ) from exc
        raise InvalidInputError(f"--reports-csv {file} is not valid CSV: {exc}") from exc
    if not rows:
        raise InvalidInputError(f"--reports-csv {file} has no data rows (a header line and one row per report)")
    missing = [c for c in (id_column, text_column) if c not in header]
    if missing:
        raise InvalidInputError(
            f"--reports-csv {file} lacks column(s) {missing}; its columns are {[h for h in header if h]} "
            "(choose others with --id-column / --text-column)"
        )
    requests: list[ReportRequest] = []
    seen: dict[str, int] = {}
    duplicates: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if None in row:
            raise InvalidInputError(f"--reports-csv {file} line {line} has more fields than the header")
        rid = (row.get(id_column) or "").strip()
        if not _SAFE_ID.match(rid) or rid in (".", ".."):
            raise InvalidInputError(
                f"--reports-csv {file} line {line}: id {rid!r} cannot be a folder name (use letters, digits, "
                "'.', '_', '-', not starting with '.', at most 128 characters)"
            )
        if rid in seen:
            duplicates.add(rid)
        seen.setdefault(rid, line)
        text = check_report_text(row.get(text_column), what=f"report {rid!r} (line {line})")
        raw_seed = (row.get(seed_column) or "").strip() if seed_column in header else ""
        if raw_seed:
            if not raw_seed.isdigit():
                raise InvalidInputError(f"--reports-csv {file} line {line}: seed {raw_seed!r} is not an integer >= 0")
            requests.append(ReportRequest(rid, text, int(raw_seed), "column"))
        else:
            requests.append(ReportRequest(rid, text, derive_seed(base_seed, rid), "derived"))
    if duplicates:
        raise InvalidInputError(f"--reports-csv {file} repeats id(s) {sorted(duplicates)[:10]}; ids must be unique")
    return requests


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (0-based ``i``) -> ``(i, n)``; ``None`` -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise InvalidInputError(f"--shard must be i/n with 0 <= i < n, got {text!r}")
    return int(match[1]), int(match[2])


def is_complete(folder: Path, request: ReportRequest) -> bool:
    """Whether ``folder`` holds a finished output for ``request`` (see the module docstring)."""
    try:
        prov = json.loads((folder / PROVENANCE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(prov, dict) or not isinstance(prov.get("files"), dict):
        return False
    volume = Path(str(prov["files"].get("volume", "")))
    return (
        prov.get("report_sha256") == sha256_text(request.text)
        and prov.get("seed") == request.seed
        and volume.name == OUTPUT_NAME
        and (folder / OUTPUT_NAME).is_file()
        and (folder / OUTPUT_NAME).stat().st_size > 0
    )


def generate_reports(
    pipeline: GenerationPipeline,
    requests: Sequence[ReportRequest],
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 4,
    strategy: str = "nearest",
    steps: int | None = None,
    cfg: float | None = None,
    control_scale: float | None = None,
    png: bool = True,
    shard: tuple[int, int] = (0, 1),
    progress: ProgressFn | None = None,
) -> BatchSummary:
    """Generate every request not already complete under ``out_dir``, ``batch_size`` reports per sampling batch.

    ``shard=(i, n)`` takes every n-th request starting at the i-th (one process per GPU, no coordination).
    Writes ``out_dir/batch_summary.json`` (this call's written/skipped/failed ids) at the end.
    """
    from ctrag.generation.output import save_result

    if batch_size < 1:
        raise InvalidInputError(f"--batch-size must be >= 1, got {batch_size}")
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"--out {root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    mine = list(requests)[shard[0] :: shard[1]]
    summary = BatchSummary()
    todo: list[ReportRequest] = []
    for req in mine:
        if is_complete(root / req.id, req):
            summary.skipped.append(req.id)
        else:
            todo.append(req)
    finished = len(summary.skipped)
    if progress is not None:
        progress(REPORTS_STAGE, finished, len(mine))
    for number, start in enumerate(range(0, len(todo), batch_size)):
        chunk = todo[start : start + batch_size]
        try:
            results = pipeline.generate_batch(
                [r.text for r in chunk],
                [r.seed for r in chunk],
                strategy=strategy,
                steps=steps,
                cfg=cfg,
                control_scale=control_scale,
                progress=progress,
            )
        except CtragError as exc:
            results = [exc] * len(chunk)
        for position, (req, result) in enumerate(zip(chunk, results, strict=True)):
            if isinstance(result, CtragError):
                summary.failed[req.id] = str(result)
            else:
                extra = {
                    "report_id": req.id,
                    "seed_source": req.seed_source,
                    "batch": {
                        "number": number,
                        "position": position,
                        "size": len(chunk),
                        "ids": [r.id for r in chunk],
                        "batch_size": batch_size,
                        "shard": list(shard),
                    },
                }
                try:
                    (root / req.id).mkdir(exist_ok=True)
                    save_result(result, root / req.id / OUTPUT_NAME, png=png, extra_provenance=extra)
                    summary.written.append(req.id)
                except OSError as exc:
                    summary.failed[req.id] = f"writing failed: {exc}"
            finished += 1
            if progress is not None:
                progress(REPORTS_STAGE, finished, len(mine))
    atomic_write_text(root / SUMMARY_NAME, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
