"""``CaseIndex``: a FAISS index over case embeddings, with the cases, the raw vectors and the encoder identity.

Why each part is kept:

* the **FAISS structure** answers "which rows are nearest" fast, exactly (flat) or approximately (HNSW, IVF-PQ);
* the **raw vectors** (``vectors.npy``, memory-mapped on load) give exact cosine scores for any subset of rows,
  which strategies such as *farthest*, filtered searches and re-scoring of approximate shortlists need;
* the **cases** (``cases.jsonl``, full :class:`~ctrag.data.case.Case` records with report text and paths) turn a
  row id into something a user or a generator can use, and carry split and patient ids for the leakage guard;
* the **encoder fingerprint** makes mixing vectors from two encoders an error rather than silent nonsense.

Row ``i`` of the FAISS index, of the vectors and of the case list always describe the same case.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ctrag._version import __version__
from ctrag.config import config_to_dict, from_dict
from ctrag.data.case import SPLITS, Case
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import ConfigError, DataValidationError, IncompatibleIndexError, InvalidInputError
from ctrag.index import faiss_backend
from ctrag.index.config import IndexConfig
from ctrag.index.storage import META_NAME, resolve_version_dir, versioned_write
from ctrag.utils.hashing import sha256_file
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

INDEX_FORMAT = "ctrag-case-index"
FORMAT_VERSION = 1
FAISS_NAME = "index.faiss"
#: Inverted lists of an on-disk IVF-PQ index (memory-mapped; only present when ``ivfpq.on_disk``).
IVFDATA_NAME = "index.ivfdata"
VECTORS_NAME = "vectors.npy"
CASES_NAME = "cases.jsonl"
#: Largest deviation of a vector's norm from 1 that still counts as L2-normalised.
NORM_TOLERANCE = 1e-3
_SCORE_CHUNK = 65_536


class SavableComponent(Protocol):
    """Anything stored beside an index in its own sub-folder (e.g. the hybrid scorer)."""

    def save(self, directory: str | os.PathLike[str]) -> Any: ...


@dataclass(frozen=True)
class CaseArrays:
    """Per-row metadata as arrays, so filters over 10^6 cases are vectorised instead of Python loops."""

    split: np.ndarray  # (n,) int8 index into SPLITS
    has_mask: np.ndarray  # (n,) bool
    has_volume: np.ndarray  # (n,) bool
    labels: np.ndarray  # (n, 18) int8; -1 where a case has no labels
    patient: np.ndarray  # (n,) int64 patient code (same code = same patient)
    patient_codes: dict[str, int]  # patient id -> code


class CaseIndex:
    """FAISS index + vectors + case metadata; build with :meth:`build`, persist with :meth:`save`/:meth:`load`."""

    def __init__(
        self,
        *,
        faiss_index: Any,
        vectors: np.ndarray,
        cases: Sequence[Case],
        encoder_name: str,
        encoder_fingerprint: str,
        config: IndexConfig,
        effective: Mapping[str, Any] | None = None,
        encoder_spec: Mapping[str, Any] | None = None,
        created: str | None = None,
        ctrag_version: str | None = None,
        source: Mapping[str, Any] | None = None,
        component_dirs: Mapping[str, Path] | None = None,
    ) -> None:
        n = len(cases)
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise DataValidationError(f"CaseIndex: {vectors.shape[0]} vectors for {n} cases")
        if int(faiss_index.ntotal) != n or int(faiss_index.d) != vectors.shape[1]:
            raise DataValidationError(
                f"CaseIndex: FAISS index holds {faiss_index.ntotal}x{faiss_index.d}, expected {n}x{vectors.shape[1]}"
            )
        self._faiss = faiss_index
        self._search_faiss: Any = None  # the index searches run on (a GPU copy where one is used), made lazily
        self._scratch: faiss_backend.ScratchDir | None = None
        self._vectors = vectors
        self._cases = list(cases)
        self.encoder_name = encoder_name
        self.encoder_fingerprint = encoder_fingerprint
        self.encoder_spec = dict(encoder_spec or {})
        self.config = config
        self.effective = dict(effective or {"kind": config.kind})
        self.created = created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.ctrag_version = ctrag_version or __version__
        self.source = dict(source or {})
        self._components: dict[str, SavableComponent] = {}
        self._component_dirs: dict[str, Path] = dict(component_dirs or {})
        self._row_of: dict[str, int] = {}
        for i, case in enumerate(self._cases):
            if case.case_id in self._row_of:
                raise DataValidationError(f"CaseIndex: duplicate case id {case.case_id!r}")
            self._row_of[case.case_id] = i

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        cases: Sequence[Case],
        *,
        encoder_fingerprint: str,
        encoder_name: str,
        config: IndexConfig | None = None,
        seed: int = 0,
        encoder_spec: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
        progress: ProgressFn | None = None,
    ) -> CaseIndex:
        """Index ``embeddings`` (n, dim), row ``i`` belonging to ``cases[i]``.

        ``encoder_spec`` is what recreates the encoder later (e.g. ``{"name_or_path": "minilm", "weights": None}``),
        so ``ctrag search`` can embed queries with the same encoder the index was built with.
        """
        config = config or IndexConfig()
        if not encoder_fingerprint:
            raise InvalidInputError("CaseIndex.build: encoder_fingerprint must be non-empty")
        vectors = np.asarray(embeddings)
        if vectors.ndim != 2:
            raise InvalidInputError(f"CaseIndex.build: embeddings must be 2-D (n, dim), got shape {vectors.shape}")
        if len(cases) == 0:
            raise InvalidInputError("CaseIndex.build: nothing to index (no cases)")
        if vectors.shape[0] != len(cases):
            raise InvalidInputError(f"CaseIndex.build: {vectors.shape[0]} embeddings for {len(cases)} cases")
        vectors = _check_normalised(vectors, "CaseIndex.build: embeddings")
        scratch = faiss_backend.ScratchDir() if config.kind == "ivfpq" and config.ivfpq.on_disk else None
        faiss_index, effective = faiss_backend.build_faiss_index(
            vectors, config, seed=seed, progress=progress, ondisk_dir=None if scratch is None else scratch.path
        )
        effective["seed"] = seed
        built = cls(
            faiss_index=faiss_index,
            vectors=vectors,
            cases=cases,
            encoder_name=encoder_name,
            encoder_fingerprint=encoder_fingerprint,
            config=config,
            effective=effective,
            encoder_spec=encoder_spec,
            source=source,
        )
        built._scratch = scratch  # an unsaved on-disk index reads its lists from here
        return built

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self._cases)

    def __repr__(self) -> str:
        return (
            f"CaseIndex(kind={self.kind!r}, count={len(self)}, dim={self.dim}, splits={list(self.splits)}, "
            f"encoder={self.encoder_name!r})"
        )

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    @property
    def count(self) -> int:
        return len(self._cases)

    @property
    def cases(self) -> list[Case]:
        return list(self._cases)

    def case(self, row: int) -> Case:
        return self._cases[int(row)]

    @property
    def vectors(self) -> np.ndarray:
        """(n, dim) float32, read-only (memory-mapped after :meth:`load`)."""
        return self._vectors

    @property
    def faiss_index(self) -> Any:
        return self._faiss

    @property
    def on_disk(self) -> bool:
        """Whether the FAISS inverted lists are memory-mapped from ``index.ivfdata`` (IVF-PQ ``on_disk``)."""
        return self.kind == "ivfpq" and self.config.ivfpq.on_disk

    def _searcher(self) -> Any:
        if self._search_faiss is None:
            self._search_faiss = faiss_backend.to_search_device(self._faiss, self.kind, self.config.device)
            if self._search_faiss is not self._faiss:
                faiss_backend.set_search_params(self._search_faiss, self.kind, nprobe=self.effective.get("nprobe"))
        return self._search_faiss

    @cached_property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self._cases]

    @cached_property
    def patient_ids(self) -> frozenset[str]:
        return frozenset(c.patient_id for c in self._cases)

    @cached_property
    def splits(self) -> tuple[str, ...]:
        """Splits present in the index, in canonical order."""
        present = {c.split for c in self._cases}
        return tuple(s for s in SPLITS if s in present)

    def split_counts(self) -> dict[str, int]:
        out = dict.fromkeys(self.splits, 0)
        for c in self._cases:
            out[c.split] += 1
        return out

    def row_of(self, case_id: str) -> int:
        try:
            return self._row_of[case_id]
        except KeyError:
            raise KeyError(f"case {case_id!r} is not in this index") from None

    def __contains__(self, case_id: object) -> bool:
        return isinstance(case_id, str) and case_id in self._row_of

    @cached_property
    def arrays(self) -> CaseArrays:
        n = len(self._cases)
        split = np.fromiter((SPLITS.index(c.split) for c in self._cases), dtype=np.int8, count=n)
        has_mask = np.fromiter((c.has_mask for c in self._cases), dtype=bool, count=n)
        has_volume = np.fromiter((c.has_volume for c in self._cases), dtype=bool, count=n)
        labels = np.full((n, len(CT_RATE_LABELS)), -1, dtype=np.int8)
        for i, c in enumerate(self._cases):
            if c.labels is not None:
                labels[i] = c.labels
        codes: dict[str, int] = {}
        patient = np.fromiter((codes.setdefault(c.patient_id, len(codes)) for c in self._cases), np.int64, count=n)
        return CaseArrays(
            split=split, has_mask=has_mask, has_volume=has_volume, labels=labels, patient=patient, patient_codes=codes
        )

    # ------------------------------------------------------------------ search
    def check_queries(self, queries: np.ndarray) -> np.ndarray:
        """Validate query vectors: (n, dim) or (dim,), finite, L2-normalised; returns (n, dim) float32."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[0] == 0:
            raise InvalidInputError(f"query vectors must have shape (n, {self.dim}), got {np.shape(queries)}")
        if q.shape[1] != self.dim:
            raise IncompatibleIndexError(
                f"query dimension {q.shape[1]} does not match the index dimension {self.dim} "
                f"(index encoder {self.encoder_name}, fingerprint {self.encoder_fingerprint})"
            )
        return _check_normalised(q, "query vectors")

    def search(
        self, queries: np.ndarray, k: int, *, rerank: bool = False, shortlist: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS top-``k``: (scores, rows), each (n_queries, k'), k' = min(k, count), best first.

        Scores are FAISS's: exact cosine for flat and HNSW, PQ approximations for IVF-PQ. ``rerank=True``
        takes FAISS's top ``max(k, shortlist)`` (``shortlist`` defaults to k), replaces their scores with exact
        cosines from the stored vectors and keeps the best k: with IVF-PQ this is what turns a poor top-1 into
        a near-exact one. For an on-disk index the pages of the memory-mapped vectors read for re-scoring are
        unmapped afterwards (bounded memory, ~0.5 ms more per query); otherwise they stay mapped (faster).
        Rows a structure could not fill (possible with IVF when ``nprobe`` lists hold fewer
        than k cases) are -1 with score -inf.
        """
        q = self.check_queries(queries)
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        if shortlist is not None and shortlist < 1:
            raise InvalidInputError(f"shortlist must be >= 1, got {shortlist}")
        if rerank:  # an on-disk index is the memory-bounded setting: do not let the vectors pile up in RSS
            return faiss_backend.search_rescored(
                self._searcher(), self._vectors, q, k, shortlist or k, release_pages=self.on_disk
            )
        scores, rows = self._searcher().search(q, min(int(k), len(self)))
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32), rows

    def exact_scores(self, queries: np.ndarray, rows: np.ndarray | None = None, *, precise: bool = False) -> np.ndarray:
        """Exact cosine (n_queries, n_rows) between queries and the stored vectors of ``rows`` (all when None).

        float32 GEMM by default. A float32 GEMM rounds differently depending on matrix shape and on a row's
        position in it (a few 1e-7), which can swap two near-identical reports between a batched and a single
        query, or between a full scan and a shortlist. ``precise=True`` accumulates in float64 (products of
        float32 numbers are exact there) and returns float64, so rankings built on it do not depend on how the
        work was split; it is several times slower, so the retriever uses it only on the rows a strategy ranks.
        """
        q = self.check_queries(queries)
        dtype: Any = np.float64 if precise else np.float32
        qd = q.astype(dtype, copy=False)
        idx = None if rows is None else np.asarray(rows, dtype=np.int64)
        if idx is not None and idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise InvalidInputError(f"row ids must be in [0, {len(self)}), got min {idx.min()} max {idx.max()}")
        n = len(self) if idx is None else idx.size
        out = np.empty((q.shape[0], n), dtype=dtype)
        for start in range(0, n, _SCORE_CHUNK):
            sel = slice(start, start + _SCORE_CHUNK) if idx is None else idx[start : start + _SCORE_CHUNK]
            block = np.asarray(self._vectors[sel], dtype=dtype)
            out[:, start : start + block.shape[0]] = qd @ block.T
        return out

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Tune query-time knobs of HNSW (``ef_search``) or IVF-PQ (``nprobe``) after building or loading."""
        faiss_backend.set_search_params(self._faiss, self.kind, ef_search=ef_search, nprobe=nprobe)
        if self._search_faiss is not None and self._search_faiss is not self._faiss:
            faiss_backend.set_search_params(self._search_faiss, self.kind, ef_search=ef_search, nprobe=nprobe)
        self.effective.update(faiss_backend.search_params(self._faiss, self.kind))

    # ------------------------------------------------------------------ components
    def attach_component(self, name: str, component: SavableComponent) -> None:
        """Store ``component`` (anything with ``save(dir)``) in sub-folder ``name/`` on the next :meth:`save`."""
        if not name.isidentifier():
            raise InvalidInputError(f"component name must be an identifier, got {name!r}")
        self._components[name] = component
        self._component_dirs.pop(name, None)

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(sorted(set(self._components) | set(self._component_dirs)))

    def component(self, name: str) -> SavableComponent | None:
        """An attached (in-memory) component, or None if it only exists on disk (see :meth:`component_dir`)."""
        return self._components.get(name)

    def component_dir(self, name: str) -> Path | None:
        """Folder of a component stored with a loaded index, or None."""
        return self._component_dirs.get(name)

    # ------------------------------------------------------------------ persistence
    def metadata(self) -> dict[str, Any]:
        """The ``index.json`` content (without file checksums, which :meth:`save` adds)."""
        return {
            "format": INDEX_FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "metric": "inner_product",
            "dim": self.dim,
            "count": len(self),
            "encoder": {
                "name": self.encoder_name,
                "fingerprint": self.encoder_fingerprint,
                "spec": self.encoder_spec,
            },
            "splits": list(self.splits),
            "split_counts": self.split_counts(),
            "config": config_to_dict(self.config),
            "effective": self.effective,
            "created": self.created,
            "ctrag_version": self.ctrag_version,
            "source": self.source,
            "components": {name: f"{name}/" for name in self.component_names},
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index to ``directory`` atomically; returns the version folder now current.

        A failure at any point (including a kill) leaves the previously saved index in ``directory`` loadable.
        """
        root = Path(directory)
        with versioned_write(root) as stage:
            faiss_backend.write_index(self._faiss, str(stage / FAISS_NAME), IVFDATA_NAME)
            np.save(stage / VECTORS_NAME, np.ascontiguousarray(self._vectors, dtype=np.float32))
            with open(stage / CASES_NAME, "w", encoding="utf-8") as fh:
                for case in self._cases:
                    fh.write(json.dumps(case.to_record(), ensure_ascii=False) + "\n")
            for name, comp in self._components.items():
                comp.save(stage / name)
                if not (stage / name).is_dir():
                    raise DataValidationError(f"component {name!r} ({type(comp).__name__}) wrote no folder")
            for name, folder in self._component_dirs.items():
                if name not in self._components:
                    shutil.copytree(folder, stage / name)
            meta = self.metadata()
            meta["files"] = {
                fname: {"bytes": (stage / fname).stat().st_size, "sha256": sha256_file(stage / fname)}
                for fname in self._file_names()
            }
            (stage / META_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        version = resolve_version_dir(root)
        self._component_dirs = {name: version / name for name in self.component_names}
        if self.on_disk:  # map the saved lists: the build's temporary copy (or an older version) goes away
            self._faiss = faiss_backend.read_index(str(version / FAISS_NAME), on_disk=True)
            self._search_faiss = None
            self.set_search_params(nprobe=self.effective.get("nprobe"))
            if self._scratch is not None:
                self._scratch.cleanup()
                self._scratch = None
        logger.info("saved %r to %s", self, version)
        return version

    def _file_names(self) -> tuple[str, ...]:
        names = (FAISS_NAME, VECTORS_NAME, CASES_NAME)
        return (*names, IVFDATA_NAME) if self.on_disk else names

    @staticmethod
    def read_metadata(directory: str | os.PathLike[str]) -> dict[str, Any]:
        """``index.json`` of the current version of ``directory`` (cheap: no vectors or FAISS read)."""
        version = resolve_version_dir(directory)
        try:
            meta = json.loads((version / META_NAME).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataValidationError(f"index {directory}: unreadable {META_NAME} ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
            raise DataValidationError(f"index {directory}: {META_NAME} is not a ctrag case index")
        if int(meta.get("format_version", -1)) > FORMAT_VERSION:
            raise IncompatibleIndexError(
                f"index {directory} has format version {meta.get('format_version')}; this ctrag "
                f"({__version__}) reads up to {FORMAT_VERSION}"
            )
        return meta

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        expected_fingerprint: str | None = None,
        *,
        expected_dim: int | None = None,
        mmap: bool = True,
        verify: bool = False,
    ) -> CaseIndex:
        """Load an index saved by :meth:`save`.

        ``expected_fingerprint``/``expected_dim`` are the query encoder's; a mismatch raises
        :class:`~ctrag.errors.IncompatibleIndexError` naming both values, before any large file is read.
        Files are checked against the sizes recorded at save time (``verify=True`` also checks SHA-256).
        """
        root = Path(directory)
        meta = cls.read_metadata(root)
        version = resolve_version_dir(root)
        enc = meta.get("encoder") or {}
        if expected_fingerprint is not None and enc.get("fingerprint") != expected_fingerprint:
            raise IncompatibleIndexError(
                f"index {root} was built with encoder {enc.get('name')!r} (fingerprint {enc.get('fingerprint')}), "
                f"but the query encoder has fingerprint {expected_fingerprint}; rebuild the index with this "
                f"encoder or search with the one it was built with"
            )
        dim, count = int(meta["dim"]), int(meta["count"])
        if expected_dim is not None and dim != expected_dim:
            raise IncompatibleIndexError(
                f"index {root} has dimension {dim}, but the query encoder produces {expected_dim}-d vectors"
            )
        files = meta.get("files") or {}
        try:
            config = from_dict(IndexConfig, meta.get("config") or {})
        except ConfigError as exc:
            raise DataValidationError(f"index {root}: bad config in {META_NAME} ({exc})") from exc
        on_disk = config.kind == "ivfpq" and config.ivfpq.on_disk
        for fname in (FAISS_NAME, VECTORS_NAME, CASES_NAME, *((IVFDATA_NAME,) if on_disk else ())):
            path = version / fname
            if not path.is_file():
                raise DataValidationError(f"index {root}: missing file {fname} in {version.name} (index corrupted)")
            record = files.get(fname) or {}
            if "bytes" in record and path.stat().st_size != int(record["bytes"]):
                raise DataValidationError(
                    f"index {root}: {fname} has {path.stat().st_size} bytes, index.json records {record['bytes']} "
                    f"(index corrupted or modified)"
                )
            if verify and "sha256" in record and sha256_file(path) != record["sha256"]:
                raise DataValidationError(f"index {root}: {fname} fails its SHA-256 check (index corrupted)")
        try:
            vectors = np.load(version / VECTORS_NAME, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataValidationError(f"index {root}: cannot read {VECTORS_NAME} ({exc})") from exc
        if vectors.shape != (count, dim) or vectors.dtype != np.float32:
            raise DataValidationError(
                f"index {root}: {VECTORS_NAME} is {vectors.dtype}{vectors.shape}, expected float32({count}, {dim})"
            )
        try:
            faiss_index = faiss_backend.read_index(str(version / FAISS_NAME), on_disk=on_disk)
        except RuntimeError as exc:
            raise DataValidationError(f"index {root}: cannot read {FAISS_NAME} ({exc})") from exc
        cases = _read_cases(version / CASES_NAME, root)
        if len(cases) != count:
            raise DataValidationError(f"index {root}: {CASES_NAME} has {len(cases)} cases, index.json says {count}")
        components = {name: version / str(sub).rstrip("/") for name, sub in (meta.get("components") or {}).items()}
        for name, folder in components.items():
            if not folder.is_dir():
                raise DataValidationError(f"index {root}: component {name!r} folder {folder.name}/ is missing")
        index = cls(
            faiss_index=faiss_index,
            vectors=vectors,
            cases=cases,
            encoder_name=str(enc.get("name", "")),
            encoder_fingerprint=str(enc.get("fingerprint", "")),
            encoder_spec=enc.get("spec") or {},
            config=config,
            effective=meta.get("effective"),
            created=meta.get("created"),
            ctrag_version=meta.get("ctrag_version"),
            source=meta.get("source"),
            component_dirs=components,
        )
        eff = index.effective
        index.set_search_params(ef_search=eff.get("ef_search"), nprobe=eff.get("nprobe"))
        return index


def _read_cases(path: Path, root: Path) -> list[Case]:
    cases = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                cases.append(Case.from_record(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise DataValidationError(f"index {root}: {path.name}:{lineno} is not a valid case ({exc})") from exc
    return cases


def _check_normalised(x: np.ndarray, what: str) -> np.ndarray:
    """Finite, unit-norm float32 rows, checked block by block so a memory-mapped corpus is not loaded whole."""
    arr = np.asarray(x, dtype=np.float32)  # no copy for float32 input, memory maps included
    if arr.ndim != 2:
        raise InvalidInputError(f"{what} must be 2-D, got shape {arr.shape}")
    n_bad, first_bad, first_norm = 0, -1, 0.0
    for start in range(0, arr.shape[0], _SCORE_CHUNK):
        block = np.asarray(arr[start : start + _SCORE_CHUNK])
        if not np.isfinite(block).all():
            raise InvalidInputError(f"{what} contain NaN or infinite values")
        norms = np.linalg.norm(block, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if bad.size and first_bad < 0:
            first_bad, first_norm = start + int(bad[0]), float(norms[bad[0]])
        n_bad += bad.size
    if n_bad:
        raise InvalidInputError(
            f"{what} must be L2-normalised (inner product = cosine); row {first_bad} has norm "
            f"{first_norm:.4f} ({n_bad} such rows). Encoders return normalised vectors; "
            f"use ctrag.encoders.base.l2_normalise for others"
        )
    return np.ascontiguousarray(arr)
