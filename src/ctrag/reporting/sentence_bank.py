"""``SentenceBank``: corpus report sentences filed under Reg2RG regions, embedded and searchable per region.

Why a bank of sentences and not of reports: retrieval-augmented report generation (AdaRAG-CT's organ-indexed
sentences, Reg2RG's region paragraphs) needs "what do training reports say about *this* region", so each region
gets its own search space. Every sentence keeps its source case, patient and split, so later strategies can
keep one sentence per source case and the leakage guard can prove that no evaluation report is in the bank.

Built from the ``train`` split only unless the caller names other splits: a bank used while evaluating report
generation on ``val``/``test`` must not contain those reports. Identical sentence texts (CT-RATE reports are
templated: "Trachea, both main bronchi are open." appears in most of them) are embedded once and share a
vector; every occurrence stays a row with its own source case.

On disk (a versioned folder, written like a :class:`~ctrag.index.CaseIndex`: staged, then switched in by one
rename): ``index.json`` (the header every versioned ctrag folder has; kind ``ctrag-sentence-bank``, encoder
fingerprint, dimension, splits, counts), ``sentences.jsonl`` (one row per occurrence) and ``vectors.npy`` (one
L2-normalised float32 row per distinct text). Loading with an encoder whose fingerprint differs from the saved one
is refused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrag._version import __version__
from ctrag.data.case import SPLITS, Case
from ctrag.encoders.base import Encoder
from ctrag.errors import DataValidationError, IncompatibleIndexError, InvalidInputError
from ctrag.index.storage import META_NAME, resolve_version_dir, versioned_write
from ctrag.reporting.sentences import REGIONS, tag_report
from ctrag.utils.progress import ProgressFn
from ctrag.utils.serialization import read_meta, write_json

logger = logging.getLogger(__name__)

BANK_KIND = "ctrag-sentence-bank"
FORMAT_VERSION = 1
SENTENCES_NAME = "sentences.jsonl"
VECTORS_NAME = "vectors.npy"
DEFAULT_SPLITS: tuple[str, ...] = ("train",)
_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class BankSentence:
    """One sentence occurrence: its text, where it comes from, its regions and abnormal flag."""

    text: str
    case_id: str
    patient_id: str
    split: str
    section: str
    regions: tuple[str, ...]
    abnormal: bool

    def to_record(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "case_id": self.case_id,
            "patient_id": self.patient_id,
            "split": self.split,
            "section": self.section,
            "regions": list(self.regions),
            "abnormal": self.abnormal,
        }

    @classmethod
    def from_record(cls, rec: Any, where: str) -> BankSentence:
        if not isinstance(rec, dict):
            raise DataValidationError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        try:
            regions = tuple(str(r) for r in rec["regions"])
            out = cls(
                text=str(rec["text"]),
                case_id=str(rec["case_id"]),
                patient_id=str(rec["patient_id"]),
                split=str(rec["split"]),
                section=str(rec["section"]),
                regions=regions,
                abnormal=bool(rec["abnormal"]),
            )
        except (KeyError, TypeError) as exc:
            raise DataValidationError(f"{where}: sentence record lacks {exc}") from None
        unknown = [r for r in regions if r not in REGIONS]
        if unknown:
            raise DataValidationError(f"{where}: unknown region(s) {unknown}; regions are {REGIONS}")
        return out


@dataclass(frozen=True)
class SentenceHit:
    """A search result: the sentence, its cosine score, and how many bank rows share its text."""

    sentence: BankSentence
    score: float
    occurrences: int = 1


class SentenceBank:
    """Sentences of training reports with per-region embedding search (see the module docstring)."""

    def __init__(
        self,
        sentences: Sequence[BankSentence],
        text_ids: np.ndarray,
        vectors: np.ndarray,
        *,
        fingerprint: str,
        splits: Sequence[str],
    ) -> None:
        text_ids = np.asarray(text_ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if not sentences:
            raise InvalidInputError("a sentence bank needs at least one sentence")
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise DataValidationError(f"sentence vectors must be a non-empty 2-D array, got shape {vectors.shape}")
        if text_ids.shape != (len(sentences),):
            raise DataValidationError(f"{len(sentences)} sentences but {text_ids.shape[0]} text ids")
        if text_ids.min() < 0 or text_ids.max() >= vectors.shape[0]:
            raise DataValidationError(f"text ids must lie in [0, {vectors.shape[0]}), got {text_ids.min()}..")
        norms = np.linalg.norm(vectors, axis=1)
        if not np.all(np.abs(norms - 1.0) <= _NORM_TOLERANCE):
            raise DataValidationError("sentence vectors are not L2-normalised (the encoder must normalise them)")
        self._sentences = tuple(sentences)
        self._text_ids = text_ids
        self._vectors = vectors
        self.fingerprint = fingerprint
        self.splits = tuple(splits)
        self._rows: dict[str, np.ndarray] = {
            region: np.asarray([i for i, s in enumerate(self._sentences) if region in s.regions], dtype=np.int64)
            for region in REGIONS
        }

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        cases: Iterable[Case],
        encoder: Encoder,
        *,
        splits: Sequence[str] = DEFAULT_SPLITS,
        batch_size: int = 64,
        progress: ProgressFn | None = None,
    ) -> SentenceBank:
        """Split, tag and embed the reports of the ``cases`` whose split is in ``splits`` (default: train only).

        Cases of other splits are skipped and counted in the log, so passing a whole corpus is safe. Raises
        ``InvalidInputError`` when no case of those splits has report text.
        """
        splits = tuple(splits)
        bad = [s for s in splits if s not in SPLITS]
        if not splits or bad:
            raise InvalidInputError(f"splits must be a non-empty subset of {SPLITS}, got {list(splits)}")
        if not encoder.supports_text:
            raise InvalidInputError(f"encoder {encoder.name!r} cannot embed text")
        sentences: list[BankSentence] = []
        skipped = used = 0
        for case in cases:
            if case.split not in splits:
                skipped += 1
                continue
            if not case.has_report:
                continue
            used += 1
            for tagged in tag_report(case.report_findings, case.report_impression):
                sentences.append(
                    BankSentence(
                        tagged.text,
                        case.case_id,
                        case.patient_id,
                        case.split,
                        tagged.section,
                        tagged.regions,
                        tagged.abnormal,
                    )
                )
        if skipped:
            logger.info("sentence bank: skipped %d case(s) outside splits %s", skipped, list(splits))
        if not sentences:
            raise InvalidInputError(
                f"no report sentences in the {'/'.join(splits)} split(s) ({used} case(s) with a report); "
                "a sentence bank needs training reports"
            )
        distinct: dict[str, int] = {}
        text_ids = np.asarray([distinct.setdefault(s.text, len(distinct)) for s in sentences], dtype=np.int64)
        texts = list(distinct)
        chunks = []
        for start in range(0, len(texts), batch_size):
            chunk = encoder.encode_text(texts[start : start + batch_size])
            chunks.append(np.asarray(chunk, dtype=np.float32))
            if progress is not None:
                progress("embed sentences", min(start + batch_size, len(texts)), len(texts))
        vectors = np.concatenate(chunks, axis=0)
        if vectors.shape[0] != len(texts):
            raise DataValidationError(f"encoder returned {vectors.shape[0]} vectors for {len(texts)} texts")
        logger.info("sentence bank: %d sentences (%d distinct) from %d case(s)", len(sentences), len(texts), used)
        return cls(sentences, text_ids, vectors, fingerprint=encoder.fingerprint, splits=splits)

    # -- access -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sentences)

    def __repr__(self) -> str:
        return f"SentenceBank({len(self)} sentences, {self.distinct_texts} distinct, splits={list(self.splits)})"

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    @property
    def distinct_texts(self) -> int:
        return int(self._vectors.shape[0])

    @property
    def sentences(self) -> tuple[BankSentence, ...]:
        return self._sentences

    @property
    def case_ids(self) -> frozenset[str]:
        return frozenset(s.case_id for s in self._sentences)

    def region_sentences(self, region: str) -> list[BankSentence]:
        return [self._sentences[i] for i in self._rows[_check_region(region)]]

    def region_counts(self) -> dict[str, int]:
        return {region: int(rows.size) for region, rows in self._rows.items()}

    def vector_of(self, row: int) -> np.ndarray:
        """The embedding of bank row ``row`` (shared by all rows with the same text)."""
        return self._vectors[self._text_ids[row]]

    def search(
        self,
        query_vec: np.ndarray,
        region: str,
        k: int,
        *,
        abnormal: bool | None = None,
        distinct_text: bool = True,
    ) -> list[SentenceHit]:
        """The ``k`` sentences of ``region`` most similar (cosine) to ``query_vec``, best first.

        ``abnormal`` keeps only abnormal (True) or normal (False) sentences. With ``distinct_text`` (default) a
        text shared by many reports is returned once, from its first source case, with its count; otherwise
        every occurrence is a candidate (what per-source-case strategies such as MMR need).
        """
        region = _check_region(region)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(query_vec, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dim:
            raise IncompatibleIndexError(f"query has dimension {q.shape[0]}, the sentence bank has {self.dim}")
        if not np.all(np.isfinite(q)):
            raise InvalidInputError("query vector has non-finite values")
        rows = self._rows[region]
        if abnormal is not None:
            rows = rows[np.asarray([self._sentences[i].abnormal == abnormal for i in rows], dtype=bool)]
        if rows.size == 0:
            return []
        text_scores = self._vectors @ q
        counts: dict[int, int] = {}
        if distinct_text:
            first: dict[int, int] = {}
            for row in rows.tolist():
                tid = int(self._text_ids[row])
                counts[tid] = counts.get(tid, 0) + 1
                first.setdefault(tid, row)
            rows = np.asarray(list(first.values()), dtype=np.int64)
        scores = text_scores[self._text_ids[rows]]
        order = np.lexsort((rows, -scores))[:k]  # ties: earlier row first, so results are deterministic
        return [
            SentenceHit(
                self._sentences[int(rows[i])],
                float(scores[i]),
                counts.get(int(self._text_ids[rows[i]]), 1),
            )
            for i in order
        ]

    # -- persistence --------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return {
            "kind": BANK_KIND,
            "format_version": FORMAT_VERSION,
            "ctrag_version": __version__,
            "encoder_fingerprint": self.fingerprint,
            "dim": self.dim,
            "splits": list(self.splits),
            "sentences": len(self),
            "distinct_texts": self.distinct_texts,
            "cases": len(self.case_ids),
            "region_counts": self.region_counts(),
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the bank as a new version of ``directory``; readers see the old or the new bank, never half."""
        with versioned_write(directory) as staging:
            with open(staging / SENTENCES_NAME, "w", encoding="utf-8") as fh:
                for s, text_id in zip(self._sentences, self._text_ids.tolist(), strict=True):
                    rec = s.to_record()
                    rec["text_id"] = int(text_id)
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            np.save(staging / VECTORS_NAME, self._vectors, allow_pickle=False)
            write_json(staging / META_NAME, self.metadata())
        return Path(directory)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        encoder: Encoder | None = None,
        expected_fingerprint: str | None = None,
    ) -> SentenceBank:
        """Read a saved bank; refuse it (``IncompatibleIndexError``) when its encoder is not the expected one."""
        root = Path(directory)
        if not root.exists():
            raise InvalidInputError(f"sentence bank {root} does not exist")
        folder = resolve_version_dir(root)
        meta = read_meta(folder / META_NAME, BANK_KIND, FORMAT_VERSION)
        saved = str(meta.get("encoder_fingerprint", ""))
        wanted = encoder.fingerprint if encoder is not None else expected_fingerprint
        if wanted is not None and wanted != saved:
            raise IncompatibleIndexError(
                f"sentence bank {root} was built with encoder {saved!r}, but the query encoder is {wanted!r}; "
                "rebuild the bank with this encoder"
            )
        path = folder / VECTORS_NAME
        if not path.is_file():
            raise DataValidationError(f"missing {VECTORS_NAME} in {folder}")
        vectors = np.load(path, allow_pickle=False)
        sentences: list[BankSentence] = []
        text_ids: list[int] = []
        spath = folder / SENTENCES_NAME
        if not spath.is_file():
            raise DataValidationError(f"missing {SENTENCES_NAME} in {folder}")
        with open(spath, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataValidationError(f"{spath}:{n}: not valid JSON ({exc})") from None
                sentences.append(BankSentence.from_record(rec, f"{spath}:{n}"))
                text_ids.append(int(rec.get("text_id", -1)) if isinstance(rec, dict) else -1)
        if len(sentences) != int(meta.get("sentences", -1)) or vectors.shape[0] != int(meta.get("distinct_texts", -1)):
            raise DataValidationError(f"{folder}: {META_NAME} does not match the stored sentences/vectors")
        if vectors.ndim != 2 or vectors.shape[1] != int(meta.get("dim", -1)):
            raise DataValidationError(
                f"{folder}: vectors have shape {vectors.shape}, {META_NAME} says dim {meta.get('dim')}"
            )
        return cls(sentences, np.asarray(text_ids), vectors, fingerprint=saved, splits=meta.get("splits", ()))


def _check_region(region: str) -> str:
    if region not in REGIONS:
        raise InvalidInputError(f"unknown region {region!r}; regions are {', '.join(REGIONS)}")
    return region
