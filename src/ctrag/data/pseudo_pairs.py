"""Retrieval-guided pseudo pairs: attach a real report of another study to an unpaired CT (after RAFM).

RAFM (Retrieval-Augmented Flow Matching, CBCT-to-CT) replaces random or batch-local pseudo pairing, whose
endpoints are often semantically mismatched, with pairs found by nearest-neighbour retrieval in a frozen embedding
space. ctrag has the same gap: real CTs without their reports and real CT-RATE reports without their CTs. Here a CT
and a report are paired when they are close in a shared space:

* ``shared-space``: the CT's volume embedding and the report's text embedding from a trained shared-space encoder
  (``ctrag train encoder``) -- the caller passes ``embed_ct`` that runs the volume tower;
* ``mask-caption`` (the route when no such encoder exists): the CT's annotation-derived text (its manifest caption,
  or :func:`ctrag.data.captions.caption_from_mask` of its mask) and the report, both through one text encoder.
  That space knows anatomy and annotated lesions, not image findings, so these pairs are weak; the pairing record
  says which space was used.

Assignment (:func:`assign_pairs`): ``top1`` (each CT gets its best report; a report may serve several CTs),
``mutual`` (kept only when the CT is also the report's best CT, the stricter choice), ``greedy`` (one-to-one, highest
similarity first). ``threshold`` drops pairs scoring below it.

Only ``train`` cases are paired (:class:`~ctrag.errors.LeakageError` otherwise): a pseudo pair is training data, and
an evaluation case inside one would leak its report into training. A paired case keeps the CT's id, patient,
volume and mask, takes the report's text and labels, and carries ``report_source="pseudo-paired"`` and
``pairing={"kind": "pseudo", ...}`` so that manifests, encoder-training summaries (``report_sources``) and
generation provenance (``text_source``) show it is not the CT's own report.

Quality (:func:`label_jaccard`): the Jaccard index between the 18 CT-RATE labels of the two sides. For a CT these are
its manifest labels when it has them, else labels read from its annotation-derived caption by a label extractor
(:mod:`ctrag.labels`); masks themselves carry anatomy only, so no CT label is derived from voxels here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from ctrag.data.case import Case
from ctrag.errors import ConfigError, InvalidInputError, LeakageError

Method = Literal["mutual", "top1", "greedy"]
METHODS: tuple[str, ...] = ("mutual", "top1", "greedy")
PAIR_SPLIT = "train"


@dataclass(frozen=True)
class PseudoPair:
    """One retrieved pair. ``rank``: 1-based position of the report in the CT's similarity order."""

    ct_case_id: str
    report_case_id: str
    score: float
    method: str
    rank: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PseudoPairConfig:
    """``method``: mutual | top1 | greedy; ``threshold``: minimum cosine similarity kept (None keeps all)."""

    method: str = "mutual"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"PseudoPairConfig: method must be one of {METHODS}, got {self.method!r}")
        if self.threshold is not None and not -1.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"PseudoPairConfig: threshold is a cosine in [-1, 1], got {self.threshold!r}")


@dataclass
class PseudoPairResult:
    """Pairs plus what was dropped and why, and the space the similarities came from."""

    pairs: list[PseudoPair]
    space: str
    unpaired_ct: dict[str, str] = field(default_factory=dict)  # ct case id -> reason

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "pairs": [p.to_dict() for p in self.pairs], "unpaired_ct": self.unpaired_ct}


def assign_pairs(
    sim: np.ndarray,
    ct_ids: Sequence[str],
    report_ids: Sequence[str],
    method: str = "mutual",
    threshold: float | None = None,
) -> list[PseudoPair]:
    """Pairs from a (n_ct, n_report) similarity matrix; ties go to the lower index (deterministic)."""
    cfg = PseudoPairConfig(method, threshold)
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape != (len(ct_ids), len(report_ids)):
        raise InvalidInputError(
            f"assign_pairs: similarity shape {sim.shape} does not match {len(ct_ids)} CTs x {len(report_ids)} reports"
        )
    if sim.size == 0:
        return []
    order = np.argsort(-sim, axis=1, kind="stable")
    rank_of = np.empty_like(order)
    rank_of[np.arange(sim.shape[0])[:, None], order] = np.arange(1, sim.shape[1] + 1)[None, :]
    chosen: list[tuple[int, int]] = []
    if cfg.method == "greedy":
        flat = np.argsort(-sim, axis=None, kind="stable")
        used_ct: set[int] = set()
        used_rep: set[int] = set()
        for f in flat:
            i, j = divmod(int(f), sim.shape[1])
            if i in used_ct or j in used_rep:
                continue
            used_ct.add(i)
            used_rep.add(j)
            chosen.append((i, j))
            if len(used_ct) == sim.shape[0] or len(used_rep) == sim.shape[1]:
                break
        chosen.sort()
    else:
        best_rep = order[:, 0]
        best_ct = np.argmax(sim, axis=0)
        for i, j in enumerate(best_rep):
            if cfg.method == "top1" or int(best_ct[j]) == i:
                chosen.append((i, int(j)))
    out = []
    for i, j in chosen:
        score = float(sim[i, j])
        if cfg.threshold is not None and score < float(cfg.threshold):
            continue
        out.append(PseudoPair(ct_ids[i], report_ids[j], score, cfg.method, int(rank_of[i, j])))
    return out


def check_train_only(cases: Sequence[Case], role: str) -> None:
    """Refuse any non-train case: pseudo pairs are training data."""
    bad = [c.case_id for c in cases if c.split != PAIR_SPLIT]
    if bad:
        raise LeakageError(
            f"pseudo pairing takes {PAIR_SPLIT} cases only; {len(bad)} {role} case(s) are not: {bad[:5]} "
            "(evaluation cases must never be paired into training data)"
        )


def ct_caption(case: Case) -> str | None:
    """The CT's annotation-derived text: its manifest caption, else a caption of its mask, else None."""
    if case.report_source == "annotation-derived" and case.has_report:
        return case.report_text
    if case.mask_path is not None:
        from ctrag.data.captions import caption_from_mask
        from ctrag.data.nifti import load_volume

        ct = load_volume(case.volume_path) if case.volume_path else None
        cap = caption_from_mask(load_volume(case.mask_path), ct)
        return "\n".join(p for p in (cap.findings, cap.impression) if p)
    return None


def pair_cases(
    ct_cases: Sequence[Case],
    report_cases: Sequence[Case],
    *,
    encode_text: Callable[[Sequence[str]], np.ndarray],
    embed_ct: Callable[[Sequence[Case]], np.ndarray] | None = None,
    space: str = "mask-caption",
    config: PseudoPairConfig | None = None,
) -> PseudoPairResult:
    """Pair unpaired train CTs with train reports by cosine similarity in one space.

    ``embed_ct`` (CT cases -> vectors in the text space, e.g. a shared-space volume tower) is used when given;
    otherwise each CT is represented by :func:`ct_caption` through ``encode_text``.
    """
    cfg = config or PseudoPairConfig()
    check_train_only(ct_cases, "CT")
    check_train_only(report_cases, "report")
    reports = [c for c in report_cases if c.has_report and c.report_source == "radiologist"]
    if not reports:
        raise InvalidInputError("pseudo pairing needs radiologist reports to pair with; none were given")
    patients = {c.patient_id for c in reports}
    unpaired: dict[str, str] = {}
    cts: list[Case] = []
    texts: list[str] = []
    for c in ct_cases:
        if not c.has_volume:
            unpaired[c.case_id] = "no volume"
        elif c.report_source == "radiologist" and c.has_report:
            unpaired[c.case_id] = "already has its own radiologist report"
        elif c.patient_id in patients:
            unpaired[c.case_id] = "its patient has a report in the pool (pair it for real, not by retrieval)"
        elif embed_ct is None:
            cap = ct_caption(c)
            if cap is None:
                unpaired[c.case_id] = "no annotation-derived caption or mask to embed"
            else:
                cts.append(c)
                texts.append(cap)
        else:
            cts.append(c)
    if not cts:
        return PseudoPairResult([], space, unpaired)
    ct_vec = _unit(np.asarray(embed_ct(cts) if embed_ct is not None else encode_text(texts), dtype=np.float32))
    rep_vec = _unit(np.asarray(encode_text([c.report_text for c in reports]), dtype=np.float32))
    if ct_vec.shape[1] != rep_vec.shape[1]:
        raise InvalidInputError(
            f"CT vectors ({ct_vec.shape[1]}-d) and report vectors ({rep_vec.shape[1]}-d) are not in one space"
        )
    pairs = assign_pairs(
        ct_vec @ rep_vec.T, [c.case_id for c in cts], [c.case_id for c in reports], cfg.method, cfg.threshold
    )
    kept = {p.ct_case_id for p in pairs}
    for c in cts:
        if c.case_id not in kept:
            unpaired[c.case_id] = f"no {cfg.method} pair" + (f" above {cfg.threshold}" if cfg.threshold else "")
    return PseudoPairResult(pairs, space, unpaired)


def paired_case(ct: Case, report: Case, pair: PseudoPair, space: str) -> Case:
    """The CT with the report's text and labels, marked as a pseudo pair."""
    if (ct.case_id, report.case_id) != (pair.ct_case_id, pair.report_case_id):
        raise InvalidInputError(f"pair {pair} does not join {ct.case_id} and {report.case_id}")
    extra = dict(ct.extra)
    if ct.has_report:
        extra["own_caption"] = ct.report_text  # the CT's annotation-derived text, kept beside the borrowed report
    return ct.evolve(
        report_findings=report.report_findings,
        report_impression=report.report_impression,
        report_source="pseudo-paired",
        labels=report.labels,
        extra=extra,
        pairing={
            "kind": "pseudo",
            "method": pair.method,
            "score": round(pair.score, 6),
            "rank": pair.rank,
            "space": space,
            "report_case_id": report.case_id,
            "report_patient_id": report.patient_id,
            "report_dataset": report.dataset,
        },
    )


def paired_corpus_cases(ct_cases: Sequence[Case], report_cases: Sequence[Case], result: PseudoPairResult) -> list[Case]:
    """CT cases (paired ones replaced by their pseudo-paired version) for a manifest; reports are not copied."""
    by_ct = {p.ct_case_id: p for p in result.pairs}
    reports = {c.case_id: c for c in report_cases}
    return [
        paired_case(c, reports[by_ct[c.case_id].report_case_id], by_ct[c.case_id], result.space)
        if c.case_id in by_ct
        else c
        for c in ct_cases
    ]


def label_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Jaccard of binary label vectors; two all-negative rows agree fully (1.0)."""
    a = np.atleast_2d(np.asarray(a) > 0)
    b = np.atleast_2d(np.asarray(b) > 0)
    inter = (a & b).sum(axis=1)
    union = (a | b).sum(axis=1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
