"""``CtragService``: what one running service holds (retriever, generation pipeline, corpus) and does with it.

The HTTP layer (``ctrag.serve.app``) only translates requests into these calls and results into responses, so
every operation is usable and testable without a server. Models are built on first use (or by :meth:`load`,
which ``ctrag serve`` calls before it binds), never at import, and then kept for the life of the process: that
is the point of a service. Request threads and the job worker share one retriever and one text encoder; their
calls are serialised by one lock (fast tokenizers are not safe to call from two threads at once, and a query is
a few milliseconds against a generation's seconds).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctrag._version import __version__
from ctrag.data.case import Case, Corpus
from ctrag.data.labels import CT_RATE_LABELS, label_names, source_space
from ctrag.data.nifti import Volume, load_volume
from ctrag.data.report_text import check_report_text
from ctrag.errors import InvalidInputError, LeakageError, WeightsNotFoundError
from ctrag.serve.config import ServeConfig
from ctrag.serve.jobs import Job
from ctrag.serve.security import CASE_ID, JOB_ID, UPLOAD_ID, check_name, new_id
from ctrag.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

EXCERPT_CHARS = 160
BODY_ALPHA = 0
"""Overlay alpha of the body label: it covers the whole patient, so drawn it would hide the CT (NiiVue 0.69 draws
every label with a non-zero alpha at the overlay's full opacity, so a faint body is not possible)."""
UPLOAD_CHUNK = 1 << 16


class NotFound(InvalidInputError):
    """A case, job or upload the service does not know (HTTP 404)."""


class NotReady(InvalidInputError):
    """A job whose files are asked for before it succeeded (HTTP 409)."""


class TooLarge(InvalidInputError):
    """An upload over the size cap (HTTP 413)."""


class _LockedEncoder:
    """The shared text encoder with ``encode_text`` under the service lock; everything else passes through."""

    def __init__(self, inner: Any, lock: threading.RLock) -> None:
        self._inner = inner
        self._lock = lock

    def encode_text(self, texts: Sequence[str], *args: Any, **kwargs: Any) -> np.ndarray:
        with self._lock:
            return np.asarray(self._inner.encode_text(texts, *args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _LockedRetriever:
    """The shared retriever with ``search`` under the service lock (the pipeline retrieves its proxy through it)."""

    def __init__(self, inner: Any, lock: threading.RLock) -> None:
        self._inner = inner
        self._lock = lock

    def search(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._inner.search(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


def label_colours(label_set: str) -> dict[int, tuple[int, int, int]]:
    """Overlay colours (0..255 RGB) per label: the tri-planar PNG's colours for coarse labels, a qualitative
    palette otherwise, so the viewer's legend matches the PNG written beside each CT."""
    from ctrag.segment.overlay import COARSE_COLOURS

    names = label_names(label_set)
    if label_set == "coarse":
        return {code: tuple(round(255 * c) for c in COARSE_COLOURS[code]) for code in names}  # type: ignore[misc]
    import matplotlib

    palette = matplotlib.colormaps["tab20"]
    return {
        code: tuple(round(255 * c) for c in palette(i % 20)[:3])  # type: ignore[misc]
        for i, code in enumerate(sorted(names))
    }


def _alpha(name: str) -> int:
    return BODY_ALPHA if name == "body" else 255


class CtragService:
    """The loaded models and corpus behind ``ctrag serve`` (see module docstring)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._retriever: Any | None = None
        self._pipeline: Any | None = None
        self._corpus: Corpus | None = None
        self._corpus_loaded = False
        self._jobs_meta: dict[str, dict[str, Any]] = {}
        self._mask_locks: dict[str, threading.Lock] = {}

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Build everything now (``ctrag serve`` does this before it listens, so the first request is fast)."""
        self.retriever.encoder  # noqa: B018  (creates the query encoder)
        if self.config.weights_dir is not None:
            _ = self.pipeline
        _ = self.corpus

    @property
    def models_loaded(self) -> bool:
        return self._retriever is not None and (self.config.weights_dir is None or self._pipeline is not None)

    @property
    def can_generate(self) -> bool:
        return self.config.weights_dir is not None

    @property
    def retriever(self) -> Any:
        if self._retriever is None:
            with self._load_lock:
                if self._retriever is None:
                    from ctrag.retrieval.retriever import Retriever

                    device = self.config.device or "cpu"
                    self._retriever = Retriever.from_dir(self.config.index_dir, device=device)
        return self._retriever

    @property
    def pipeline(self) -> Any:
        if self.config.weights_dir is None:
            raise WeightsNotFoundError("this service was started without --weights; it can search but not generate")
        if self._pipeline is None:
            retriever = self.retriever
            shared = _LockedEncoder(retriever.encoder, self.lock)
            with self._load_lock:
                if self._pipeline is None:
                    from ctrag.generation.pipeline import GenerationPipeline
                    from ctrag.generation.run_folder import read_pipeline_index

                    recorded = (read_pipeline_index(self.config.weights_dir).get("encoder") or {}).get("fingerprint")
                    # One text model in memory when the UNet and the index were built with the same encoder.
                    encoder = shared if recorded == getattr(shared, "fingerprint", None) else None
                    self._pipeline = GenerationPipeline.from_pretrained(
                        self.config.weights_dir,
                        overrides=list(self.config.overrides),
                        encoder=encoder,
                        retriever=_LockedRetriever(retriever, self.lock),
                        device=self.config.device,
                    )
        return self._pipeline

    @property
    def corpus(self) -> Corpus | None:
        """The corpus named by ``--corpus``, else the one the index records, else None (indexed cases only)."""
        if not self._corpus_loaded:
            with self._load_lock:
                if not self._corpus_loaded:
                    folder = self.config.corpus_dir
                    if folder is None:
                        recorded = (getattr(self.retriever.index, "source", None) or {}).get("corpus")
                        folder = Path(recorded) if recorded and Path(recorded).is_dir() else None
                    self._corpus = Corpus.load(folder) if folder is not None else None
                    self._corpus_loaded = True
        return self._corpus

    @property
    def label_set(self) -> str:
        """The label set of every mask the viewer shows: the ControlNet's when generation is loaded, else coarse."""
        return str(self.pipeline.config.controlnet.label_set) if self.can_generate else "coarse"

    # ------------------------------------------------------------------ health and legend
    def health(self, queue_counts: dict[str, int]) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "models_loaded": self.models_loaded,
            "generation": self.can_generate,
            "queue": queue_counts,
        }

    def legend(self) -> dict[str, Any]:
        label_set = self.label_set
        colours = label_colours(label_set)
        names = label_names(label_set)
        return {
            "label_set": label_set,
            "labels": [
                {"value": c, "name": names[c], "rgb": list(colours[c]), "alpha": _alpha(names[c])}
                for c in sorted(names)
            ],
        }

    # ------------------------------------------------------------------ search
    def search(self, request: dict[str, Any]) -> dict[str, Any]:
        from ctrag.retrieval.guard import assert_no_leakage
        from ctrag.retrieval.label_agreement import label_names as vector_names
        from ctrag.retrieval.label_agreement import pair_jaccard
        from ctrag.retrieval.types import CaseFilter

        text, query_case = request.get("text"), request.get("query_case")
        if (text is None) == (query_case is None):
            raise InvalidInputError("give exactly one of text or query_case")
        unknown = sorted(set(request.get("labels") or ()) - set(CT_RATE_LABELS))
        if unknown:
            raise InvalidInputError(f"unknown CT-RATE labels {unknown}; known: {list(CT_RATE_LABELS)}")
        retriever = self.retriever
        query_labels: Sequence[int] | None = None
        source = "none"
        if query_case is not None:
            case = self.case(query_case)
            if not case.has_report:
                raise InvalidInputError(f"case {case.case_id!r} has no report text to search with")
            try:
                assert_no_leakage(retriever.index, [case])
            except LeakageError as exc:
                raise InvalidInputError(str(exc)) from exc
            text, query_labels, source = case.report_text, case.labels, "case" if case.labels is not None else "none"
        assert text is not None
        text = check_report_text(text, what="the query")
        filters = CaseFilter(
            splits=("train",),
            has_mask=True if request.get("has_mask") else None,
            has_volume=True if request.get("has_volume") else None,
            labels_all=tuple(request.get("labels") or ()),
        )
        with self.lock:
            hits = retriever.search(
                text, k=int(request.get("k", 5)), strategy=request.get("strategy", "nearest"), filters=filters,
                seed=int(request.get("seed", 0)),
            )  # fmt: skip
            if query_labels is None:
                predicted = self._predict_labels(text)
                if predicted is not None:
                    query_labels, source = predicted, "predicted"
        return {
            "scorer": retriever.scorer_name,
            "indexed_cases": len(retriever.index),
            "query_labels": None if query_labels is None else vector_names(query_labels),
            "query_labels_source": source,
            "hits": [
                {
                    "rank": h.rank,
                    "case_id": h.case.case_id,
                    "patient_id": h.case.patient_id,
                    "split": h.case.split,
                    "score": float(h.score),
                    "report_excerpt": _excerpt(h.case.report_text),
                    "report_text": h.case.report_text,
                    "report_source": h.case.report_source,
                    "labels": None if h.case.labels is None else vector_names(h.case.labels),
                    "label_agreement": None if query_labels is None else pair_jaccard(query_labels, h.case.labels),
                    "has_volume": h.case.has_volume,
                    "has_mask": h.case.has_mask,
                }
                for h in hits
            ],
        }

    def _predict_labels(self, text: str) -> list[int] | None:
        """The hybrid scorer's query-label prediction (its label model), or None for a dense-only index."""
        model = getattr(self.retriever.scorer, "label_model", None)
        if model is None:
            return None
        return [int(v) for v in np.asarray(model.predict([text]))[0]]

    # ------------------------------------------------------------------ corpus cases
    def _cases(self) -> Iterable[Case]:
        corpus = self.corpus
        return corpus if corpus is not None else self.retriever.index.cases

    def case(self, case_id: str) -> Case:
        check_name(case_id, CASE_ID, "case id")
        corpus = self.corpus
        if corpus is not None:
            try:
                return corpus.get(case_id)
            except KeyError:
                raise NotFound(f"no case {case_id!r} in the corpus") from None
        for case in self.retriever.index.cases:
            if case.case_id == case_id:
                return case
        raise NotFound(f"no case {case_id!r} in the index (start the service with --corpus to see other cases)")

    def case_info(self, case_id: str) -> dict[str, Any]:
        from ctrag.retrieval.label_agreement import label_names as vector_names

        case = self.case(case_id)
        base = f"/api/cases/{case.case_id}"
        return {
            "case_id": case.case_id,
            "patient_id": case.patient_id,
            "split": case.split,
            "dataset": case.dataset,
            "report_text": case.report_text,
            "report_source": case.report_source,
            "labels": None if case.labels is None else vector_names(case.labels),
            "has_volume": case.has_volume,
            "has_mask": case.has_mask,
            "files": {
                "volume": f"{base}/volume" if case.has_volume else None,
                "mask": f"{base}/mask" if case.has_mask else None,
            },
        }

    def case_volume_file(self, case_id: str) -> Path:
        case = self.case(case_id)
        if not case.volume_path or not Path(case.volume_path).is_file():
            raise NotFound(f"case {case_id!r} has no CT volume on disk")
        return Path(case.volume_path)

    def case_mask_file(self, case_id: str) -> Path:
        """The case's mask in the viewer's label set (converted once, cached under the output folder)."""
        from ctrag.data.labels import convert_labels
        from ctrag.data.nifti import save_volume

        case = self.case(case_id)
        if not case.mask_path or not Path(case.mask_path).is_file():
            raise NotFound(f"case {case_id!r} has no mask on disk")
        label_set = self.label_set
        cached = self.config.out_dir / "cache" / "cases" / f"{case.case_id}.{label_set}.mask.nii.gz"
        with self.lock:
            case_lock = self._mask_locks.setdefault(case.case_id, threading.Lock())
        # One conversion per case: a viewer request arriving while the warm-up converts the same mask waits for it.
        with case_lock:
            if not cached.is_file():
                volume = load_volume(case.mask_path)
                values = [int(v) for v in np.unique(volume.array)]
                labels = convert_labels(volume.array, source_space(case.mask_source, values), label_set, name=case_id)
                save_volume(cached, labels, volume.affine, description=f"ctrag {label_set} labels of {case.case_id}")
        return cached

    def warm_mask_cache(self, progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
        """Convert every case mask to the viewer's label set ahead of the first request.

        A full-resolution CT-RATE mask takes seconds to convert; ``ctrag serve`` runs this in a background thread
        after loading, so the first "show the retrieved case" in the viewer does not wait for it. A mask that
        cannot be converted is logged and left for the request to report; returns ``{case_id: error}`` for those.
        """
        with_masks = [c for c in self._cases() if c.mask_path and Path(c.mask_path).is_file()]
        failed: dict[str, str] = {}
        for i, case in enumerate(with_masks):
            try:
                self.case_mask_file(case.case_id)
            except Exception as exc:  # a bad mask must not stop the warm-up of the others
                failed[case.case_id] = str(exc)
                logger.warning("mask of case %s not cached: %s", case.case_id, exc)
            if progress is not None:
                progress(i + 1, len(with_masks))
        return failed

    # ------------------------------------------------------------------ uploads
    def save_upload(self, chunks: Iterable[bytes], *, filename_gz: bool) -> dict[str, Any]:
        """Store an uploaded mask (NIfTI, gzipped or not) after checking size, readability and labels.

        The bytes go to a temporary file in the uploads folder; only a complete, valid label map is written under
        its upload id (gzipped, atomically), so a refused or interrupted upload leaves nothing behind.
        """
        import tempfile

        from ctrag.data.labels import check_labels
        from ctrag.data.nifti import save_volume

        uploads = self.config.uploads_dir
        uploads.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload.", suffix=".tmp.nii.gz" if filename_gz else ".tmp.nii", dir=uploads)
        staged = Path(name)
        try:
            size = 0
            with open(fd, "wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.config.max_upload_bytes:
                        raise TooLarge(f"upload over the limit of {self.config.max_upload_bytes} bytes")
                    fh.write(chunk)
            if size == 0:
                raise InvalidInputError("empty upload; send a NIfTI label mask as the request body")
            volume = load_volume(staged)
            space = source_space(None, [int(v) for v in np.unique(volume.array)])
            present = check_labels(volume.array, space, name="uploaded mask")
            if not present:
                raise InvalidInputError("uploaded mask holds no label (all zeros)")
            upload_id = new_id()
            save_volume(uploads / f"{upload_id}.nii.gz", volume.array, volume.affine, description="ctrag upload")
        finally:
            staged.unlink(missing_ok=True)
        return {
            "upload_id": upload_id,
            "shape": list(volume.array.shape),
            "spacing_mm": list(volume.spacing),
            "labels_present": present,
        }

    def upload_file(self, upload_id: str) -> Path:
        check_name(upload_id, UPLOAD_ID, "upload id")
        path = self.config.uploads_dir / f"{upload_id}.nii.gz"
        if not path.is_file():
            raise NotFound(f"no upload {upload_id!r}")
        return path

    # ------------------------------------------------------------------ generation jobs
    def job_dir(self, job_id: str) -> Path:
        return self.config.jobs_dir / check_name(job_id, JOB_ID, "job id")

    def check_job_request(self, request: dict[str, Any], job_lookup: Callable[[str], Job | None]) -> None:
        """Refuse, before it is queued, a request that cannot run (so the client gets a 4xx, not a failed job)."""
        if not self.can_generate:
            raise WeightsNotFoundError("this service was started without --weights; it can search but not generate")
        check_report_text(request["report"], what="report")
        mask = request.get("mask")
        if mask and "job_id" in mask:
            source = job_lookup(check_name(mask["job_id"], JOB_ID, "job id"))
            if source is None:
                raise NotFound(f"no job {mask['job_id']!r}")
            if source.state != "succeeded" or not (source.result or {}).get("files", {}).get("mask"):
                raise InvalidInputError(f"job {mask['job_id']!r} has no finished proxy mask to edit")
            present = list((source.result or {}).get("labels_present") or [])
            if not set(mask["keep_labels"]) & set(present):
                raise InvalidInputError(
                    f"none of the labels {sorted(set(mask['keep_labels']))} is in the proxy of job {source.job_id} "
                    f"(it has {present})"
                )
        elif mask and "upload_id" in mask:
            self.upload_file(mask["upload_id"])

    def run_job(self, job: Job, progress: Callable[[str, int, int], None], source: Job | None) -> dict[str, Any]:
        """Generate one CT for a job and write its files into the job's folder (atomically, at the end)."""
        from ctrag.data.nifti import save_volume
        from ctrag.generation.output import save_result

        req = job.request
        progress("prepare", 0, 1)
        pipe = self.pipeline
        mask, mask_labels, mask_edit, retrieved_before = self._job_mask(req.get("mask"), source)
        result = pipe(
            req["report"],
            strategy="none" if mask is not None else req.get("strategy", "nearest"),
            mask=mask,
            mask_labels=mask_labels,
            seed=int(req.get("seed", 0)),
            steps=req.get("steps"),
            cfg=req.get("cfg"),
            control_scale=req.get("control_scale"),
            progress=progress,
        )
        progress("write", 0, 1)
        folder = self.job_dir(job.job_id)
        folder.mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = {"service_job": job.job_id}
        if mask_edit is not None:
            extra["mask_edit"] = mask_edit
        if result.mask is not None:
            save_volume(
                folder / "mask.nii.gz", result.mask.astype(np.int16), result.affine,
                description=f"ctrag proxy mask ({result.label_set})",
            )  # fmt: skip
        save_result(result, folder / "ct.nii.gz", png=True, extra_provenance=extra)
        atomic_write_text(folder / "request.json", json.dumps(req, indent=2, ensure_ascii=False) + "\n")
        present = [] if result.mask is None else [int(v) for v in np.unique(result.mask) if v != 0]
        base = f"/api/jobs/{job.job_id}/files"
        retrieved = result.retrieved or retrieved_before
        return {
            "retrieved": [
                {
                    "case_id": str(r.get("case_id")),
                    "score": float(r.get("score", 0.0)),
                    "strategy": str(r.get("strategy", "")),
                    "proxy": str(r.get("proxy", "")),
                    "report_source": str(r.get("report_source", "")),
                }
                for r in retrieved
            ],
            "mask_source": result.mask_source,
            "mask_edit": mask_edit,
            "shape": list(result.volume.shape),
            "spacing_mm": list(result.spacing),
            "labels_present": present,
            "timings_s": {k: round(float(v), 4) for k, v in result.timings.items()},
            "files": {
                "ct": f"{base}/ct.nii.gz",
                "mask": f"{base}/mask.nii.gz" if result.mask is not None else None,
                "provenance": f"{base}/provenance.json",
                "png": f"{base}/preview.png",
            },
        }

    def _job_mask(
        self, spec: dict[str, Any] | None, source: Job | None
    ) -> tuple[Volume | None, str, dict[str, Any] | None, list[dict[str, Any]]]:
        """(mask, its vocabulary, the edit record for provenance, the retrieval it came from) for a job's mask."""
        if not spec:
            return None, "auto", None, []
        if "upload_id" in spec:
            return load_volume(self.upload_file(spec["upload_id"])), spec.get("mask_labels", "auto"), None, []
        if source is None or source.result is None:
            raise InvalidInputError(f"job {spec.get('job_id')!r} has no finished proxy mask to edit")
        label_set = self.label_set
        if label_set not in ("coarse", "totalseg"):
            raise InvalidInputError(f"masks of label set {label_set!r} cannot be edited here")
        volume = load_volume(self.job_dir(source.job_id) / "mask.nii.gz")
        keep = sorted({int(v) for v in spec["keep_labels"]})
        present = [int(v) for v in np.unique(volume.array) if v != 0]
        kept = [v for v in keep if v in present]
        if not kept:
            raise InvalidInputError(f"none of the labels {keep} is in the proxy of job {source.job_id} ({present})")
        edited = np.where(np.isin(volume.array, kept), volume.array, 0).astype(np.int16)
        names = label_names(label_set)
        record = {
            "from_job": source.job_id,
            "kept": [names.get(v, str(v)) for v in kept],
            "dropped": [names.get(v, str(v)) for v in present if v not in kept],
        }
        retrieved = list(source.result.get("retrieved") or [])
        return volume.with_array(edited), label_set, record, retrieved
