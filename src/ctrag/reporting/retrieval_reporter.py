"""Retrieval-only report generation: the baseline every learned reporter (AdaRAG-CT, DiffVP, Reg2RG) must beat.

Two modes over the same retrieved training cases:

* ``nearest``: the report of the single most similar training case, as written.
* ``compose``: findings assembled region by region (Reg2RG's ten RadGenome regions, :data:`REGIONS` order) from
  the sentences of the ``source_cases`` most similar cases. Per region, maximal marginal relevance
  (:func:`ctrag.retrieval.strategies.mmr`, lambda 0.7) picks ``per_region`` sentences, at most one per source
  case, so a paragraph is not three phrasings copied from one report. The impression is picked the same way
  from the source cases' impression sentences. Relevance is the cosine between the query vector and the
  sentence embedding (the index's text encoder), diversity the cosine between sentences. A sentence text is used
  once per report (templated CT-RATE sentences recur in many reports and span several regions).

Every sentence carries its source case id, patient, split and region, so a reader can trace each claim. Sources
are ``train`` cases only, never the query case or its patient (checked again after retrieval; a violation is a
:class:`~ctrag.errors.LeakageError`, not a warning).

Queries:

* report text (text-to-text retrieval; how the method is evaluated on real reports, since no shipped CT has its
  own report);
* a CT volume, embedded with the index's volume encoder when the index was built with a shared text-volume
  encoder (``ctrag train encoder`` + ``ctrag index --encoder FOLDER``). The default index has a text encoder
  only: then the query is a caption of the CT's segmentation (which anatomy it covers, from
  :mod:`ctrag.data.captions` or the classical segmenter's structures), and the result says that it is **not
  conditioned on image findings** (``image_conditioned: false``).

Deterministic: no random draws, ties broken by rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ctrag.data.case import SPLITS, Case
from ctrag.errors import ConfigError, InvalidInputError, LeakageError
from ctrag.reporting.sentences import REGIONS, tag_report
from ctrag.retrieval.strategies import apply_strategy
from ctrag.retrieval.types import CaseFilter, Hit

if TYPE_CHECKING:
    from ctrag.data.nifti import Volume
    from ctrag.encoders.base import Encoder
    from ctrag.retrieval.retriever import Retriever

logger = logging.getLogger(__name__)

Mode = Literal["compose", "nearest"]
MODES: tuple[str, ...] = ("compose", "nearest")
SOURCE_SPLIT = "train"
IMPRESSION = "impression"


@dataclass
class RetrievalReportConfig:
    """Settings of the retrieval reporter (the ``reporting.retrieval:`` section of a preset).

    ``source_cases``: nearest training cases whose sentences are candidates; ``per_region``: sentences per region
    paragraph; ``impression_sentences``: sentences of the impression; ``mmr_lambda``: relevance weight (1 = plain
    relevance order); ``one_per_case``: at most one sentence per source case per region (and in the impression).
    """

    source_cases: int = 10
    per_region: int = 3
    impression_sentences: int = 3
    mmr_lambda: float = 0.7
    one_per_case: bool = True

    def __post_init__(self) -> None:
        for name in ("source_cases", "per_region", "impression_sentences"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RetrievalReportConfig: {name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= float(self.mmr_lambda) <= 1.0:
            raise ConfigError(f"RetrievalReportConfig: mmr_lambda must be in [0, 1], got {self.mmr_lambda}")


@dataclass(frozen=True)
class Candidate:
    """A sentence of a source case that may enter the report."""

    text: str
    case_id: str
    patient_id: str
    split: str
    section: str
    regions: tuple[str, ...]
    abnormal: bool
    case_rank: int


@dataclass(frozen=True)
class ReportSentence:
    """A sentence of the generated report with where it came from."""

    text: str
    section: str  # "findings" or "impression"
    region: str | None  # the paragraph it fills (None in the impression and in nearest mode's impression)
    case_id: str
    patient_id: str
    split: str
    abnormal: bool
    score: float  # cosine to the query (compose), the case's retrieval score (nearest)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QueryInfo:
    """What the report was made from, stated plainly (no query is described as more than it is)."""

    kind: Literal["text", "volume"]
    mode: str  # "report-text", "shared-space-volume", "mask-caption"
    image_conditioned: bool
    text: str | None = None
    case_id: str | None = None
    patient_id: str | None = None
    volume_path: str | None = None
    mask_path: str | None = None
    mask_source: str | None = None  # "given", "classical-segmenter", or None
    notes: list[str] = field(default_factory=list)


@dataclass
class RetrievalReport:
    """A retrieval-only report: text, its sentences with sources, the retrieved cases and the query."""

    mode: str
    findings: str
    impression: str
    sentences: list[ReportSentence]
    sources: list[Hit]
    query: QueryInfo
    config: RetrievalReportConfig
    index: dict[str, Any]

    @property
    def text(self) -> str:
        from ctrag.reporting.sentences import assemble_report

        return assemble_report(self.findings, self.impression)

    @property
    def source_case_ids(self) -> list[str]:
        return [h.case_id for h in self.sources]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "retrieval",
            "mode": self.mode,
            "report": self.text,
            "findings": self.findings,
            "impression": self.impression,
            "sentences": [s.to_dict() for s in self.sentences],
            "sources": [
                {
                    "rank": h.rank,
                    "case_id": h.case_id,
                    "patient_id": h.case.patient_id,
                    "split": h.case.split,
                    "score": round(float(h.score), 6),
                    "report_source": h.case.report_source,
                }
                for h in self.sources
            ],
            "query": asdict(self.query),
            "config": asdict(self.config),
            "index": self.index,
        }


# --------------------------------------------------------------------------------------------------------------
# Sentence selection (pure functions; tested on their own)
# --------------------------------------------------------------------------------------------------------------


def select_sentences(
    relevance: np.ndarray,
    vectors: np.ndarray,
    case_ids: Sequence[str],
    k: int,
    *,
    mmr_lambda: float = 0.7,
    one_per_case: bool = True,
) -> np.ndarray:
    """Positions of up to ``k`` candidates by MMR, at most one per source case when ``one_per_case``.

    A thin use of the project's MMR strategy with source cases as its groups, so report sentences and
    retrieved cases follow one definition. With ``mmr_lambda=1`` the order is plain relevance order.
    """
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.size == 0:
        return np.zeros(0, dtype=np.int64)
    codes = {c: i for i, c in enumerate(dict.fromkeys(case_ids))}
    groups = np.asarray([codes[c] for c in case_ids], dtype=np.int64)
    return apply_strategy(
        "mmr",
        rel,
        None,
        int(k),
        np.random.default_rng(0),  # MMR draws nothing; the generator only satisfies the strategy contract
        groups=groups,
        vectors=np.asarray(vectors, dtype=np.float32),
        options={"mmr_lambda": float(mmr_lambda), "pool": int(rel.size), "one_per_patient": bool(one_per_case)},
    )


def candidates_of(hits: Sequence[Hit]) -> list[Candidate]:
    """Every sentence of the retrieved cases' reports, tagged with its regions and section."""
    out = []
    for hit in hits:
        case = hit.case
        for tagged in tag_report(case.report_findings, case.report_impression):
            out.append(
                Candidate(
                    tagged.text,
                    case.case_id,
                    case.patient_id,
                    case.split,
                    tagged.section,
                    tagged.regions,
                    tagged.abnormal,
                    hit.rank,
                )
            )
    return out


# --------------------------------------------------------------------------------------------------------------
# The reporter
# --------------------------------------------------------------------------------------------------------------


class RetrievalReporter:
    """Report text from training cases retrieved for a report or a CT (see the module docstring)."""

    def __init__(
        self,
        retriever: Retriever,
        config: RetrievalReportConfig | None = None,
        *,
        volume_encoder: Encoder | None = None,
        encoder_factory: Callable[[Mapping[str, Any]], Encoder] | None = None,
    ) -> None:
        self.retriever = retriever
        self._encoder_factory = encoder_factory
        self.config = config or RetrievalReportConfig()
        self._volume_encoder = volume_encoder
        self._text_vectors: dict[str, np.ndarray] = {}
        self._train_rows = int(np.count_nonzero(retriever.index.arrays.split == SPLITS.index(SOURCE_SPLIT)))
        if self._train_rows == 0:
            raise InvalidInputError(
                f"the index has no {SOURCE_SPLIT!r} cases (splits: {list(retriever.index.splits)}); "
                "a retrieval report is built from training reports only"
            )

    @classmethod
    def from_dir(
        cls,
        index_dir: str | os.PathLike[str],
        config: RetrievalReportConfig | None = None,
        *,
        encoder: Encoder | None = None,
        device: str = "cpu",
        onnx: bool = True,
        encoder_factory: Callable[[Mapping[str, Any]], Encoder] | None = None,
    ) -> RetrievalReporter:
        """Load an index written by ``ctrag index`` (dense scores: sentences are ranked by cosine anyway)."""
        from ctrag.retrieval.retriever import Retriever

        root = Path(index_dir)
        if not root.exists():
            raise InvalidInputError(f"index {root} does not exist (build one with `ctrag index CORPUS --out DIR`)")
        retriever = Retriever.from_dir(
            root, encoder, scorer="dense", device=device, onnx=onnx, encoder_factory=encoder_factory
        )
        return cls(retriever, config, encoder_factory=encoder_factory)

    # ---------------------------------------------------------------- queries
    def report_for_text(
        self,
        text: str,
        *,
        mode: Mode = "compose",
        exclude_case_ids: Sequence[str] = (),
        exclude_patients: Sequence[str] = (),
    ) -> RetrievalReport:
        """Report from the training cases whose reports are most similar to ``text`` (text-to-text retrieval)."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidInputError("the query report is empty")
        q = self._encode_texts([text])[0]
        info = QueryInfo(kind="text", mode="report-text", image_conditioned=False, text=text)
        info.notes.append("text-to-text retrieval: the query report is given, so this is not image-to-text")
        return self._report(q, text, mode, info, frozenset(exclude_case_ids), frozenset(exclude_patients))

    def report_for_case(self, case: Case, *, mode: Mode = "compose") -> RetrievalReport:
        """Report for a held-out case from its own report text; the case and its patient are never sources."""
        if not case.has_report:
            raise InvalidInputError(f"case {case.case_id!r} has no report text to query with")
        rep = self.report_for_text(
            case.report_text, mode=mode, exclude_case_ids=[case.case_id], exclude_patients=[case.patient_id]
        )
        rep.query.case_id, rep.query.patient_id = case.case_id, case.patient_id
        return rep

    def report_for_volume(
        self,
        volume: Volume,
        mask: Volume | None = None,
        *,
        mode: Mode = "compose",
        mask_labels: Literal["total", "coarse"] = "total",
    ) -> RetrievalReport:
        """Report for a CT: by its embedding in a shared text-volume space if the index has one, else by a caption
        of its segmentation (``mask``, else the classical segmenter's), stated as not image-conditioned."""
        from ctrag.data.nifti import check_label_mask, check_same_grid
        from ctrag.segment.api import check_ct_volume

        check_ct_volume(volume)
        if mask is not None:
            check_same_grid(mask, volume)
            check_label_mask(mask)
        info = QueryInfo(kind="volume", mode="", image_conditioned=False, volume_path=volume.path)
        if mask is not None:
            info.mask_path, info.mask_source = mask.path, "given"
        encoder = self.volume_encoder()
        if encoder is not None:
            from ctrag.encoders.preprocess import prepare_volume

            prep = prepare_volume(volume, encoder.preprocess)  # type: ignore[attr-defined]
            q = np.asarray(encoder.encode_volume(prep.tensor[None]), dtype=np.float32)[0]
            info.mode, info.image_conditioned = "shared-space-volume", True
            info.notes.append(f"CT embedded by the index's volume encoder {encoder.name!r} (shared text-volume space)")
            info.notes.extend(_tower_notes(encoder))
            if mask is None:
                info.notes.append("no mask given; this method does not need region masks, none was computed")
            return self._report(q, "", mode, info, frozenset(), frozenset())
        caption, source = _mask_caption(volume, mask, mask_labels)
        if mask is None:
            info.mask_source = "classical-segmenter"
            info.notes.append("no mask given: segmented with ctrag's classical segmenter (body, lungs, airway, bone)")
        info.mode, info.text = "mask-caption", caption
        info.notes.append(
            f"the index encoder {self.retriever.index.encoder_name!r} has no volume tower (no shared text-volume "
            f"space): cases were retrieved by a caption of the segmentation ({source}), so this report is NOT "
            "conditioned on the CT's findings"
        )
        q = self._encode_texts([caption])[0]
        return self._report(q, caption, mode, info, frozenset(), frozenset())

    def volume_encoder(self) -> Encoder | None:
        """The index's encoder if it embeds volumes into the index's space, else None."""
        if self._volume_encoder is not None:
            return self._volume_encoder
        index = self.retriever.index
        enc = self.retriever.encoder
        if enc.supports_volume:
            self._volume_encoder = enc
            return enc
        name = str(index.encoder_spec.get("name_or_path") or "")
        if name and (Path(name) / "encoder_config.json").is_file():  # a shared-space folder (ctrag train encoder)
            from ctrag.retrieval.retriever import load_encoder

            made = (self._encoder_factory or load_encoder)(index.encoder_spec)
            if made.fingerprint != index.encoder_fingerprint or not made.supports_volume:
                raise InvalidInputError(
                    f"the index records encoder folder {name} but it now has fingerprint {made.fingerprint}, not "
                    f"the index's {index.encoder_fingerprint}"
                )
            self._volume_encoder = made
            return made
        return None

    def report_for_cases(self, cases: Sequence[Case], *, mode: Mode = "compose") -> list[RetrievalReport]:
        """Evaluation entry point: the leakage guard over all query cases first, then one report per case."""
        from ctrag.retrieval.guard import assert_no_leakage

        if not cases:
            raise InvalidInputError("no query cases")
        assert_no_leakage(self.retriever.index, cases)
        self._encode_texts([c.report_text for c in cases if c.has_report])  # one batched call for all queries
        return [self.report_for_case(c, mode=mode) for c in cases]

    # ---------------------------------------------------------------- internals
    def _encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_vectors]
        if missing:
            vecs = np.asarray(self.retriever.encoder.encode_text(missing), dtype=np.float32)
            self._text_vectors.update(zip(missing, vecs, strict=True))
        return np.stack([self._text_vectors[t] for t in texts])

    def _report(
        self,
        q: np.ndarray,
        query_text: str,
        mode: str,
        info: QueryInfo,
        exclude_ids: frozenset[str],
        exclude_patients: frozenset[str],
    ) -> RetrievalReport:
        if mode not in MODES:
            raise InvalidInputError(f"mode must be one of {list(MODES)}, got {mode!r}")
        k = 1 if mode == "nearest" else self.config.source_cases
        filters = CaseFilter(splits=(SOURCE_SPLIT,), exclude_case_ids=exclude_ids, exclude_patients=exclude_patients)
        hits = self.retriever.search_vector(q, k=k, strategy="nearest", filters=filters, query_texts=[query_text])
        assert isinstance(hits, list)
        hits = [h for h in hits if isinstance(h, Hit) and h.case.has_report]
        if not hits:
            raise InvalidInputError("no training case with a report passes the filters; nothing to report from")
        _check_sources(hits, exclude_ids, exclude_patients)
        if mode == "nearest":
            findings, impression, sentences = _nearest(hits[0])
        else:
            findings, impression, sentences = self._compose(q, hits)
        index = self.retriever.index
        meta = {
            "kind": index.kind,
            "cases": len(index),
            "train_cases": self._train_rows,
            "encoder": index.encoder_name,
            "encoder_fingerprint": index.encoder_fingerprint,
        }
        return RetrievalReport(mode, findings, impression, sentences, hits, info, self.config, meta)

    def _compose(self, q: np.ndarray, hits: Sequence[Hit]) -> tuple[str, str, list[ReportSentence]]:
        cands = candidates_of(hits)
        if not cands:
            raise InvalidInputError("the retrieved training reports have no sentences")
        vecs = self._encode_texts([c.text for c in cands])
        rel = vecs @ q.astype(np.float32)
        cfg = self.config
        used: set[str] = set()
        paragraphs: list[str] = []
        out: list[ReportSentence] = []
        for region in REGIONS:
            rows = _distinct(
                [i for i, c in enumerate(cands) if c.section != IMPRESSION and region in c.regions], cands, used
            )
            picked = self._pick(rows, rel, vecs, cands, cfg.per_region)
            if not picked:
                continue
            for i in picked:
                used.add(cands[i].text)
                out.append(_sentence(cands[i], "findings", region, rel[i]))
            paragraphs.append(" ".join(cands[i].text for i in picked))
        rows = _distinct([i for i, c in enumerate(cands) if c.section == IMPRESSION], cands, used)
        picked = self._pick(rows, rel, vecs, cands, cfg.impression_sentences)
        for i in picked:
            out.append(_sentence(cands[i], IMPRESSION, None, rel[i]))
        return "\n".join(paragraphs), " ".join(cands[i].text for i in picked), out

    def _pick(
        self, rows: list[int], rel: np.ndarray, vecs: np.ndarray, cands: Sequence[Candidate], k: int
    ) -> list[int]:
        if not rows:
            return []
        idx = np.asarray(rows, dtype=np.int64)
        pos = select_sentences(
            rel[idx],
            vecs[idx],
            [cands[i].case_id for i in rows],
            k,
            mmr_lambda=self.config.mmr_lambda,
            one_per_case=self.config.one_per_case,
        )
        return [int(idx[p]) for p in pos]


def _distinct(rows: list[int], cands: Sequence[Candidate], used: set[str]) -> list[int]:
    """First occurrence of each text not used yet (candidates come in case-rank order, so the best case wins)."""
    seen: set[str] = set()
    out = []
    for i in rows:
        t = cands[i].text
        if t in used or t in seen:
            continue
        seen.add(t)
        out.append(i)
    return out


def _sentence(c: Candidate, section: str, region: str | None, score: float) -> ReportSentence:
    return ReportSentence(c.text, section, region, c.case_id, c.patient_id, c.split, c.abnormal, float(score))


def _nearest(hit: Hit) -> tuple[str, str, list[ReportSentence]]:
    case = hit.case
    sentences = [
        ReportSentence(
            t.text,
            t.section,
            t.regions[0] if (t.regions and t.section != IMPRESSION) else None,
            case.case_id,
            case.patient_id,
            case.split,
            t.abnormal,
            float(hit.score),
        )
        for t in tag_report(case.report_findings, case.report_impression)
    ]
    return case.report_findings.strip(), case.report_impression.strip(), sentences


def _check_sources(hits: Sequence[Hit], exclude_ids: frozenset[str], exclude_patients: frozenset[str]) -> None:
    """The leakage guard, applied to what was actually retrieved (not only to the filter that should prevent it)."""
    for h in hits:
        c = h.case
        if c.split != SOURCE_SPLIT or c.case_id in exclude_ids or c.patient_id in exclude_patients:
            raise LeakageError(
                f"retrieved source {c.case_id!r} (patient {c.patient_id!r}, split {c.split!r}) is not an allowed "
                "training case for this query"
            )


def _tower_notes(encoder: Encoder) -> list[str]:
    train = dict(getattr(encoder, "extra", {}).get("train", {}))
    if not train:
        return ["the volume encoder records no training summary"]
    sources = train.get("report_sources") or {}
    note = f"volume tower trained on {train.get('n_pairs', '?')} (volume, text) pairs, text sources {sources}"
    if sources.get("annotation-derived"):
        note += "; annotation-derived captions are not radiologist reports, so the space knows anatomy, not findings"
    return [note]


def _mask_caption(volume: Volume, mask: Volume | None, mask_labels: str) -> tuple[str, str]:
    """A query text stating only which anatomy the segmentation covers."""
    if mask is not None and mask_labels == "total":
        from ctrag.data.captions import caption_from_mask

        try:
            cap = caption_from_mask(mask, volume)
        except ValueError as exc:
            raise InvalidInputError(f"mask {mask.path or ''}: {exc}") from None
        return cap.findings, "TotalSegmentator-style labels of the given mask"
    if mask is None:
        from ctrag.segment.api import segment_volume

        mask = segment_volume(volume)
    from ctrag.data.labels import COARSE_LABELS

    present = {int(v) for v in np.unique(np.asarray(mask.array)) if v != 0}
    unknown = sorted(present - set(COARSE_LABELS))
    if unknown:
        raise InvalidInputError(f"mask {mask.path or ''}: labels {unknown} are not coarse labels {COARSE_LABELS}")
    names = {COARSE_LABELS[v] for v in present}
    parts = []
    if {"lung_left", "lung_right"} <= names:
        parts.append("both lungs")
    elif names & {"lung_left", "lung_right"}:
        parts.append("the " + ("left" if "lung_left" in names else "right") + " lung")
    if "airway" in names:
        parts.append("the trachea and main bronchi")
    if "bone" in names:
        parts.append("the thoracic bones")
    covered = ", ".join(parts) if parts else "the body"
    return f"Chest CT. Segmented structures: {covered}.", "coarse labels (classical segmenter)"


def report_for_volume(
    volume: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    mask: str | os.PathLike[str] | None = None,
    mode: Mode = "compose",
    config: RetrievalReportConfig | None = None,
) -> RetrievalReport:
    """``ctrag report VOLUME --index DIR [--mask M]`` as a function: load, validate, report."""
    vol, msk = load_query_volume(volume, mask)
    return RetrievalReporter.from_dir(index_dir, config).report_for_volume(vol, msk, mode=mode)


def report_for_text(
    text: str,
    index_dir: str | os.PathLike[str],
    *,
    mode: Mode = "compose",
    config: RetrievalReportConfig | None = None,
) -> RetrievalReport:
    """``ctrag report --query-report F --index DIR`` as a function."""
    return RetrievalReporter.from_dir(index_dir, config).report_for_text(text, mode=mode)


def load_query_volume(
    volume: str | os.PathLike[str], mask: str | os.PathLike[str] | None = None
) -> tuple[Volume, Volume | None]:
    """Read a CT (and its mask) for reporting: NIfTI only, a mask on the CT's own grid."""
    from ctrag.data.nifti import check_same_grid, load_volume

    for what, path in (("volume", volume), ("mask", mask)):
        if path is None:
            continue
        p = Path(path)
        if not p.exists():
            raise InvalidInputError(f"{what} {p} does not exist")
        if not (p.name.endswith(".nii") or p.name.endswith(".nii.gz")):
            raise InvalidInputError(f"{what} {p} is not a NIfTI file (.nii or .nii.gz)")
    vol = load_volume(volume)
    msk = load_volume(mask) if mask is not None else None
    if msk is not None:
        check_same_grid(msk, vol)
    return vol, msk
