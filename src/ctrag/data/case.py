"""``Case`` (one study: report, labels, volume, mask, split) and ``Corpus`` (a validated set of cases).

A case may lack a volume (a report-only CT-RATE row) or a report (a CT without text); what it has is stated
explicitly, and ``report_source`` says where its text came from, because a caption derived from annotations
(e.g. a tumour box and a diagnosis) is not a radiologist's report and must never be presented as one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.readers import read_jsonl_lines
from ctrag.errors import DataValidationError, InvalidInputError
from ctrag.utils.atomic import atomic_open

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
ReportSource = Literal["radiologist", "annotation-derived", "pseudo-paired", "none"]
# "pseudo-paired": a radiologist's report of *another* study, attached to this CT by retrieval
# (:mod:`ctrag.data.pseudo_pairs`); ``Case.pairing`` then says how, so it is never mistaken for the CT's own report.
REPORT_SOURCES: tuple[str, ...] = ("radiologist", "annotation-derived", "pseudo-paired", "none")
MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class Case:
    """One study. Paths are absolute after loading a manifest (stored relative to the manifest folder)."""

    case_id: str
    patient_id: str
    split: str
    report_findings: str = ""
    report_impression: str = ""
    report_source: str = "none"
    labels: tuple[int, ...] | None = None
    volume_path: str | None = None
    mask_path: str | None = None
    mask_source: str | None = None
    spacing: tuple[float, float, float] | None = None
    shape: tuple[int, int, int] | None = None
    dataset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    pairing: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.case_id:
            raise InvalidInputError("Case: case_id must be a non-empty string")
        if self.split not in SPLITS:
            raise InvalidInputError(f"Case {self.case_id}: split must be one of {SPLITS}, got {self.split!r}")
        if self.report_source not in REPORT_SOURCES:
            raise InvalidInputError(
                f"Case {self.case_id}: report_source must be one of {REPORT_SOURCES}, got {self.report_source!r}"
            )
        if (self.pairing is not None) != (self.report_source == "pseudo-paired"):
            raise InvalidInputError(
                f"Case {self.case_id}: a pseudo-paired report needs its pairing record and a pairing record needs "
                f"report_source='pseudo-paired' (got report_source={self.report_source!r}, pairing={self.pairing!r})"
            )
        if self.pairing is not None and self.pairing.get("kind") != "pseudo":
            raise InvalidInputError(f"Case {self.case_id}: pairing.kind must be 'pseudo', got {self.pairing!r}")
        if self.labels is not None and len(self.labels) != len(CT_RATE_LABELS):
            raise InvalidInputError(
                f"Case {self.case_id}: expected {len(CT_RATE_LABELS)} labels, got {len(self.labels)}"
            )

    @property
    def report_text(self) -> str:
        """Findings and impression joined the way CT-RATE reports read."""
        parts = [p.strip() for p in (self.report_findings, self.report_impression) if p and p.strip()]
        return "\n".join(parts)

    @property
    def has_report(self) -> bool:
        return bool(self.report_text)

    @property
    def is_pseudo_pair(self) -> bool:
        return self.pairing is not None

    @property
    def has_volume(self) -> bool:
        return self.volume_path is not None

    @property
    def has_mask(self) -> bool:
        return self.mask_path is not None

    @property
    def label_vector(self) -> np.ndarray | None:
        return None if self.labels is None else np.asarray(self.labels, dtype=np.uint8)

    def to_record(self, root: Path | None = None) -> dict[str, Any]:
        """JSON-ready dict; paths are written relative to ``root`` when given, labels as a name -> 0/1 map."""
        rec = asdict(self)
        rec["labels"] = None if self.labels is None else dict(zip(CT_RATE_LABELS, self.labels, strict=True))
        for key in ("volume_path", "mask_path"):
            if rec[key] is not None and root is not None:
                rec[key] = os.path.relpath(rec[key], root)
        rec["spacing"] = list(self.spacing) if self.spacing else None
        rec["shape"] = list(self.shape) if self.shape else None
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any], root: Path | None = None) -> Case:
        """Rebuild a case from :meth:`to_record` output; a record of another shape is a ``DataValidationError``."""
        if not isinstance(rec, dict):
            raise DataValidationError(f"a case record must be a JSON object, got {type(rec).__name__}")
        required = [f for f in ("case_id", "patient_id", "split") if not isinstance(rec.get(f), str)]
        if required:
            raise DataValidationError(
                f"case {rec.get('case_id', '?')}: field(s) {required} missing or not text (a manifest line needs "
                "case_id, patient_id and split; write manifests with `ctrag ingest`)"
            )
        try:
            return cls._from_checked_record(dict(rec), root)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, DataValidationError | InvalidInputError):
                raise
            raise DataValidationError(f"case {rec['case_id']}: malformed field ({exc})") from exc

    @classmethod
    def _from_checked_record(cls, rec: dict[str, Any], root: Path | None) -> Case:
        labels = rec.get("labels")
        if isinstance(labels, dict):
            missing = [n for n in CT_RATE_LABELS if n not in labels]
            if missing:
                raise DataValidationError(f"case {rec.get('case_id')}: labels lack {missing}")
            rec["labels"] = tuple(int(labels[n]) for n in CT_RATE_LABELS)
        elif labels is not None:
            rec["labels"] = tuple(int(v) for v in labels)
        for key in ("volume_path", "mask_path"):
            if rec.get(key) is not None and root is not None and not os.path.isabs(rec[key]):
                rec[key] = str((root / rec[key]).resolve())
        if rec.get("spacing") is not None:
            rec["spacing"] = tuple(float(v) for v in rec["spacing"])
        if rec.get("shape") is not None:
            rec["shape"] = tuple(int(v) for v in rec["shape"])
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(rec) - known)
        if unknown:
            raise DataValidationError(f"case {rec.get('case_id')}: unknown manifest fields {unknown}")
        return cls(**rec)

    def evolve(self, **changes: Any) -> Case:
        return replace(self, **changes)


class Corpus(Sequence[Case]):
    """An ordered, id-unique collection of cases with split helpers; the unit that ``ctrag index`` reads."""

    def __init__(self, cases: Iterable[Case], root: str | os.PathLike[str] | None = None) -> None:
        self._cases = list(cases)
        self.root = Path(root).resolve() if root is not None else None
        self._by_id: dict[str, int] = {}
        for i, case in enumerate(self._cases):
            if case.case_id in self._by_id:
                raise DataValidationError(f"Corpus: duplicate case id {case.case_id!r}")
            self._by_id[case.case_id] = i

    def __len__(self) -> int:
        return len(self._cases)

    @overload
    def __getitem__(self, i: int) -> Case: ...
    @overload
    def __getitem__(self, i: slice) -> Corpus: ...
    def __getitem__(self, i: int | slice) -> Case | Corpus:
        if isinstance(i, slice):
            return Corpus(self._cases[i], self.root)
        return self._cases[i]

    def __iter__(self) -> Iterator[Case]:
        return iter(self._cases)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._by_id
        return isinstance(item, Case) and item.case_id in self._by_id

    def get(self, case_id: str) -> Case:
        try:
            return self._cases[self._by_id[case_id]]
        except KeyError:
            raise KeyError(f"no case {case_id!r} in corpus") from None

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self._cases]

    def filter(self, predicate: Any) -> Corpus:
        return Corpus((c for c in self._cases if predicate(c)), self.root)

    def split(self, *names: str) -> Corpus:
        bad = [n for n in names if n not in SPLITS]
        if bad:
            raise InvalidInputError(f"unknown split(s) {bad}; splits are {SPLITS}")
        return self.filter(lambda c: c.split in names)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in SPLITS}
        for c in self._cases:
            out[c.split] += 1
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest as JSONL (one case per line) atomically; paths relative to its folder."""
        final = Path(path)
        if final.is_dir() or not final.suffix:
            final = final / MANIFEST_NAME
        root = final.parent.resolve()
        with atomic_open(final, "w") as fh:
            for case in self._cases:
                fh.write(json.dumps(case.to_record(root), ensure_ascii=False) + "\n")
        return final

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Corpus:
        """Read a manifest written by ``save`` (a file, or a corpus folder holding ``manifest.jsonl``)."""
        file = Path(path)
        if file.is_dir():
            file = file / MANIFEST_NAME
        if not file.is_file():
            raise InvalidInputError(f"no corpus manifest at {file} (run `ctrag ingest FOLDER --out DIR` first)")
        root = file.parent.resolve()
        cases = []
        for lineno, rec in read_jsonl_lines(file, what="case record"):  # strict UTF-8; bad JSON names file:line
            try:
                cases.append(Case.from_record(rec, root))
            except InvalidInputError as exc:  # DataValidationError too: name the line
                raise DataValidationError(f"{file}:{lineno}: {exc}") from None
        return cls(cases, root)
