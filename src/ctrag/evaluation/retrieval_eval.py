"""``ctrag evaluate retrieval``: how well does a retrieved report agree with the query report?

Protocol (CT-CLIP text-classifier CSVs shipped with ctrag: 800 train + 100 val CT-RATE reports with 18 labels):
the train rows form the index, the val rows are the queries. For each query and method we take the top-k index
rows and measure

- **label agreement** between the query's and each retrieved report's 18 labels: mean label-Jaccard at k (mean
  over the top k), exact-match precision at k (share of the top k whose 18 labels equal the query's exactly) and
  per-label hit rate at k (for each label, the share of queries having it whose top k contain a report having it);
  Jaccard of two all-zero label vectors is defined as 1 (two normal studies agree perfectly);
- **text agreement** of the top-1 report with the query: ROUGE-L F-measure (and ROUGE-2), see
  :mod:`ctrag.evaluation.metrics.text` (equal to Google's ``rouge-score`` with Porter stemming).

Methods: random, TF-IDF, BM25, the plain packaged MiniLM (dense cosine), a label oracle (ranks by Jaccard with
the query's *true* labels: an upper bound no text retriever can reach), ctrag's default retriever (what ``ctrag
index`` builds: MiniLM index + :class:`~ctrag.retrieval.hybrid.HybridScorer`, searched through
:class:`~ctrag.retrieval.retriever.Retriever` after the leakage guard) and ablations of it. Uncertainty: percentile
bootstrap over queries (paired: one set of resamples for every method, so differences get CIs too).

The two CSVs split by accession, not by patient: two val patients also have train reports. Their train rows are
removed from the index (and reported), so the guard's patient-level check passes and all 100 queries stay.
Everything fitted (label model, weights) sees the index rows only.

This module runs the protocol (data, methods, scoring); the metrics are in
:mod:`ctrag.evaluation.metrics.retrieval`, the paired bootstrap in :mod:`ctrag.evaluation.stats`, and the
JSON / Markdown / figure outputs in :mod:`ctrag.evaluation.retrieval_report`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctrag.config import config_to_dict
from ctrag.data.case import Case
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError
from ctrag.evaluation.metrics.retrieval import exact_precision_at_k, mean_jaccard_at_k, per_label_hit_rate
from ctrag.evaluation.stats import BootstrapPlan
from ctrag.retrieval.hybrid import HybridConfig, HybridScorer
from ctrag.retrieval.label_agreement import label_jaccard
from ctrag.retrieval.lexical import BM25Config, BM25Scorer, TfidfConfig, TfidfScorer
from ctrag.utils.progress import ProgressFn

if TYPE_CHECKING:
    from ctrag.encoders.base import Encoder
    from ctrag.index.case_index import CaseIndex
    from ctrag.retrieval.retriever import RetrievalConfig

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- data


@dataclass
class EvalData:
    """Index rows and query cases of the evaluation, plus what was done to keep them apart."""

    index_cases: list[Case]
    query_cases: list[Case]
    removed_from_index: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def split_by_patient(index_cases: Sequence[Case], query_cases: Sequence[Case]) -> EvalData:
    """Drop index rows whose patient also has a query (the guard refuses shared patients)."""
    query_patients = {c.patient_id for c in query_cases}
    kept = [c for c in index_cases if c.patient_id not in query_patients]
    removed = [c.case_id for c in index_cases if c.patient_id in query_patients]
    notes = []
    if removed:
        shared = sorted({c.patient_id for c in index_cases if c.patient_id in query_patients})
        notes.append(
            f"{len(removed)} index report(s) of {len(shared)} patient(s) who also have query reports were removed "
            f"from the index ({', '.join(removed)}; patients {', '.join(shared)})."
        )
    return EvalData(kept, list(query_cases), removed, notes)


def load_ctclip_eval_data(folder: str | Path) -> EvalData:
    """Train rows as index, val rows as queries, from a CT-CLIP classifier folder (``train.csv``, ``val.csv``)."""
    from ctrag.data.ct_rate import read_ctclip_classifier

    cases = read_ctclip_classifier(folder, patient_level_split=False)
    index_cases = [c for c in cases if c.split == "train"]
    query_cases = [c for c in cases if c.split == "val"]
    if not index_cases or not query_cases:
        raise InvalidInputError(
            f"{folder}: need both train and val reports (found {len(index_cases)} train, {len(query_cases)} val)"
        )
    unlabelled = [c.case_id for c in query_cases if c.labels is None]
    if unlabelled:
        raise InvalidInputError(f"{folder}: query reports without labels cannot be scored: {unlabelled[:5]}")
    return split_by_patient(index_cases, query_cases)


# ------------------------------------------------------------------------------------------------ methods


@dataclass
class MethodRun:
    """One method's ranking of the index rows for every query."""

    name: str
    group: str  # "baseline" | "reference" | "default" | "ablation"
    description: str
    top_rows: np.ndarray  # (n_queries, k) index rows, best first
    fit_seconds: float = 0.0
    search_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def rank_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """(n, k) row indices by descending score; ties go to the lower row (stable, deterministic)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def baseline_runs(
    index_cases: Sequence[Case],
    query_cases: Sequence[Case],
    index_emb: np.ndarray,
    query_emb: np.ndarray,
    *,
    k: int,
    seed: int,
) -> list[MethodRun]:
    """Random, TF-IDF (uni+bigram and unigram), BM25, plain dense cosine and the label oracle."""
    docs = [c.report_text for c in index_cases]
    queries = [c.report_text for c in query_cases]
    runs = []
    rng = np.random.default_rng(seed)
    runs.append(
        MethodRun(
            "random",
            "baseline",
            f"uniformly random index rows (numpy seed {seed})",
            np.stack([rng.permutation(len(docs))[:k] for _ in queries]),
        )
    )
    for name, cfg, desc in (
        ("tfidf", TfidfConfig(ngram_max=2), "TF-IDF cosine, word uni+bigrams (sklearn defaults otherwise)"),
        ("tfidf-unigram", TfidfConfig(ngram_max=1), "TF-IDF cosine, unigrams (= sklearn TfidfVectorizer())"),
    ):
        t0 = time.perf_counter()
        scorer = TfidfScorer.fit(docs, cfg)
        t1 = time.perf_counter()
        top = rank_rows(scorer.scores(queries), k)
        runs.append(MethodRun(name, "baseline", desc, top, t1 - t0, time.perf_counter() - t1))
    t0 = time.perf_counter()
    bm25 = BM25Scorer.fit(docs, BM25Config())
    t1 = time.perf_counter()
    runs.append(
        MethodRun(
            "bm25",
            "baseline",
            "Okapi BM25 (k1 1.5, b 0.75) on lower-cased whitespace tokens (= rank_bm25.BM25Okapi)",
            rank_rows(bm25.scores(queries), k),
            t1 - t0,
            time.perf_counter() - t1,
        )
    )
    t0 = time.perf_counter()
    dense = np.asarray(query_emb, dtype=np.float64) @ np.asarray(index_emb, dtype=np.float64).T
    runs.append(
        MethodRun(
            "minilm",
            "baseline",
            "plain packaged MiniLM: cosine of report embeddings (the index's dense scores)",
            rank_rows(dense, k),
            0.0,
            time.perf_counter() - t0,
        )
    )
    q_labels = _labels(query_cases)
    i_labels = _labels(index_cases)
    oracle = label_jaccard(q_labels[:, None, :], i_labels[None, :, :])
    runs.append(
        MethodRun(
            "label-oracle",
            "reference",
            "ranks by Jaccard with the query's TRUE labels (upper bound, not a retriever)",
            rank_rows(oracle, k),
        )
    )
    return runs


def _labels(cases: Sequence[Case]) -> np.ndarray:
    out = np.zeros((len(cases), len(CT_RATE_LABELS)), dtype=np.int8)
    for i, c in enumerate(cases):
        if c.labels is None:
            raise InvalidInputError(f"case {c.case_id} has no labels; label agreement needs them")
        out[i] = c.labels
    return out


ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "default-no-lcs": ({"use_lcs": False}, "default without the LCS (ROUGE-L-style) text term"),
    "default-no-lexical": (
        {"use_lcs": False, "use_bm25": False},
        "default without any lexical term (labels + dense)",
    ),
    "default-no-labels": ({"use_labels": False}, "default without the label model (LCS + BM25 + dense)"),
    "default-no-dense": ({"use_dense": False}, "default without the dense term"),
    "labels-only": (
        {"use_lcs": False, "use_bm25": False, "use_dense": False},
        "expected label-Jaccard from the label model alone",
    ),
}


def hybrid_run(
    name: str,
    description: str,
    config: HybridConfig,
    index_cases: Sequence[Case],
    index_emb: np.ndarray,
    query_cases: Sequence[Case],
    query_emb: np.ndarray,
    *,
    k: int,
    seed: int,
    group: str = "ablation",
) -> tuple[MethodRun, HybridScorer]:
    """Fit a hybrid scorer on the index rows and rank them for the queries (no retriever in between)."""
    t0 = time.perf_counter()
    scorer = HybridScorer.fit(index_cases, index_emb, config, seed)
    t1 = time.perf_counter()
    top = rank_rows(scorer.scores([c.report_text for c in query_cases], query_emb), k)
    extra = {"weights": config_to_dict(scorer.weights), "selection": _selection_summary(scorer)}
    return MethodRun(name, group, description, top, t1 - t0, time.perf_counter() - t1, extra), scorer


def _selection_summary(scorer: HybridScorer) -> dict[str, Any]:
    sel = dict(scorer.selection)
    sel.pop("grid", None)
    return sel


# ---------------------------------------------------------------------------------------------- scoring


def method_metrics(
    run: MethodRun,
    index_cases: Sequence[Case],
    query_cases: Sequence[Case],
    plan: BootstrapPlan,
    *,
    ks: Sequence[int],
    rouge_stem: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Summary metrics (with CIs) and the per-query arrays of one method."""
    from ctrag.evaluation.metrics.text import rouge_l, rouge_n

    q_labels = _labels(query_cases)
    i_labels = _labels(index_cases)
    retrieved = i_labels[run.top_rows]  # (n, k, L)
    per_query: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {
        "name": run.name,
        "group": run.group,
        "description": run.description,
        "fit_seconds": round(run.fit_seconds, 3),
        "search_seconds": round(run.search_seconds, 3),
    }
    for k in ks:
        if k > run.top_rows.shape[1]:
            raise InvalidInputError(f"method {run.name} returned {run.top_rows.shape[1]} rows, metrics need {k}")
        per_query[f"label_jaccard@{k}"] = mean_jaccard_at_k(q_labels, retrieved, k)
        per_query[f"exact_match_precision@{k}"] = exact_precision_at_k(q_labels, retrieved, k)
        summary[f"per_label_hit_rate@{k}"] = {
            name: (None if math.isnan(v) else float(v))
            for name, v in zip(CT_RATE_LABELS, per_label_hit_rate(q_labels, retrieved, k), strict=True)
        }
        summary[f"mean_label_hit_rate@{k}"] = float(np.nanmean(per_label_hit_rate(q_labels, retrieved, k)))
    refs = [c.report_text for c in query_cases]
    top1 = [index_cases[int(r)].report_text for r in run.top_rows[:, 0]]
    per_query["rouge_l@1"] = rouge_l(refs, top1, stem=rouge_stem)
    per_query["rouge_2@1"] = rouge_n(refs, top1, 2, stem=rouge_stem)
    for key, values in per_query.items():
        lo, hi = plan.ci(values)
        summary[key] = {"mean": float(values.mean()), "ci95": [lo, hi]}
    summary["top1_case_ids"] = [index_cases[int(r)].case_id for r in run.top_rows[:, 0]]
    summary.update(run.extra)
    return summary, per_query


def label_model_metrics(scorer: HybridScorer, query_cases: Sequence[Case]) -> dict[str, Any] | None:
    """Macro-F1 (at the label model's own thresholds: 0.5, or the sentence extractor's tuned ones) and macro AUC
    of the scorer's label model on the query reports."""
    if scorer.label_model is None:
        return None
    from sklearn.metrics import f1_score, roc_auc_score

    y = _labels(query_cases)
    texts = [c.report_text for c in query_cases]
    p = scorer.label_model.predict_proba(texts)
    pred = np.asarray(scorer.label_model.predict(texts)).astype(bool)
    per_label = {}
    aucs, f1s = [], []
    for j, name in enumerate(CT_RATE_LABELS):
        f1 = float(f1_score(y[:, j], pred[:, j], zero_division=0))
        auc = float(roc_auc_score(y[:, j], p[:, j])) if 0 < y[:, j].sum() < len(y) else None
        per_label[name] = {"positives": int(y[:, j].sum()), "f1": f1, "auc": auc}
        f1s.append(f1)
        if auc is not None:
            aucs.append(auc)
    return {
        "macro_f1": float(np.mean(f1s)),
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "n_queries": len(y),
        "per_label": per_label,
    }


# ------------------------------------------------------------------------------------------------ runner


@dataclass
class RetrievalEvalConfig:
    """What ``evaluate_retrieval`` computes. ``bootstrap=0`` skips confidence intervals."""

    k: int = 5
    ks: tuple[int, ...] = (1, 5)
    bootstrap: int = 2000
    confidence: float = 0.95
    seed: int = 0
    rouge_stem: bool = True
    ablations: bool = True

    def __post_init__(self) -> None:
        if self.k < 1 or any(v < 1 or v > self.k for v in self.ks):
            raise InvalidInputError(f"ks {self.ks} must lie in 1..k={self.k}")
        if not 0 < self.confidence < 1:
            raise InvalidInputError(f"confidence must be in (0, 1), got {self.confidence}")


@dataclass
class RetrievalEvalResult:
    """Everything written to ``retrieval_eval.json`` (``to_dict``) and rendered to Markdown."""

    methods: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    label_model: dict[str, Any] | None
    data: dict[str, Any]
    setup: dict[str, Any]
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "setup": self.setup,
            "data": self.data,
            "methods": self.methods,
            "comparisons": self.comparisons,
            "label_model": self.label_model,
            "timings": self.timings,
        }

    def method(self, name: str) -> dict[str, Any]:
        for m in self.methods:
            if m["name"] == name:
                return m
        raise KeyError(f"no method {name!r}; methods: {[m['name'] for m in self.methods]}")


def default_retriever_run(
    index: CaseIndex,
    scorer: HybridScorer | None,
    encoder: Any,
    query_cases: Sequence[Case],
    *,
    k: int,
    seed: int,
    retrieval_config: RetrievalConfig | None = None,
) -> MethodRun:
    """Search through ctrag's :class:`Retriever` (leakage guard first) and return the rows it ranked."""
    from ctrag.retrieval.retriever import Retriever

    retriever = Retriever(index, encoder, scorer, config=retrieval_config, scorer_name="hybrid" if scorer else None)
    t0 = time.perf_counter()
    hits = retriever.search_cases(list(query_cases), k=k, strategy="nearest", seed=seed, eval_split="val")
    elapsed = time.perf_counter() - t0
    rows = np.asarray([[index.row_of(h.case_id) for h in per_query] for per_query in hits], dtype=np.int64)
    if rows.shape != (len(query_cases), k):
        raise InvalidInputError(f"retriever returned {rows.shape} hits, expected {(len(query_cases), k)}")
    desc = "ctrag default: MiniLM flat index + hybrid scorer via Retriever (nearest)"
    extra: dict[str, Any] = {}
    if scorer is not None:
        extra = {"weights": config_to_dict(scorer.weights), "selection": _selection_summary(scorer)}
    else:
        desc = "ctrag index without a hybrid scorer (dense cosine) via Retriever"
    return MethodRun("default", "default", desc, rows, 0.0, elapsed, extra)


def evaluate_retrieval(
    data: EvalData,
    encoder: Encoder,
    *,
    index_config: Any = None,
    hybrid_config: HybridConfig | None = None,
    retrieval_config: RetrievalConfig | None = None,
    config: RetrievalEvalConfig | None = None,
    index: CaseIndex | None = None,
    scorer: HybridScorer | None = None,
    encoder_spec: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> RetrievalEvalResult:
    """Run the whole protocol. Without ``index`` an index is built as ``ctrag index`` would (train rows only).

    With ``index`` (e.g. loaded by ``Retriever.from_dir``), its rows are the index and ``scorer`` (may be None:
    dense) is what it stores; ``data.index_cases`` is then ignored.
    """
    from ctrag.index.build import build_index

    config = config or RetrievalEvalConfig()
    hybrid_config = hybrid_config or HybridConfig()
    from ctrag.encoders.cache import MemoTextEncoder, memo_encoder

    memo: Any = encoder if isinstance(encoder, MemoTextEncoder) else memo_encoder(encoder, progress=progress)
    if progress is not None and memo.progress is None:
        memo.progress = progress
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    query_texts = [c.report_text for c in data.query_cases]

    notes = list(data.notes) if index is None else []
    removed = list(data.removed_from_index) if index is None else []
    if index is None:
        # Embed every report once, with progress; the index build and the retriever then hit the memo.
        memo.encode_text([c.report_text for c in data.index_cases] + query_texts, batch_size=64)
        built = build_index(
            data.index_cases,
            memo,
            scorer="hybrid",
            hybrid_config=hybrid_config,
            splits=("train",),
            config=index_config,
            seed=config.seed,
            encoder_spec=encoder_spec,
            source={"evaluation": "ctrag evaluate retrieval"},
            progress=progress,
        )
        index, index_emb, scorer = built.index, built.embeddings, built.scorer
        timings["build_index_seconds"] = built.timings["build_index_seconds"]
        timings["fit_default_seconds"] = built.timings["fit_scorer_seconds"]
    else:
        index_emb = np.asarray(index.vectors, dtype=np.float32)
        notes.append(f"evaluated a saved index ({len(index)} rows); its rows replace the train.csv rows.")
        # A corpus ingested with patient-level splits may have moved a query's report (or its patient) into the
        # index; such queries cannot be evaluated honestly and are dropped (the guard below still checks all).
        overlap = [c.case_id for c in data.query_cases if c.case_id in index or c.patient_id in index.patient_ids]
        if overlap:
            notes.append(
                f"{len(overlap)} query report(s) whose case or patient is in the index were dropped: {overlap}"
            )
            data = EvalData(data.index_cases, [c for c in data.query_cases if c.case_id not in set(overlap)],
                            data.removed_from_index, data.notes)  # fmt: skip
            query_texts = [c.report_text for c in data.query_cases]
    index_cases = index.cases
    query_emb = memo.encode_text(query_texts)

    runs = [default_retriever_run(index, scorer, memo, data.query_cases, k=config.k, seed=config.seed,
                                  retrieval_config=retrieval_config)]  # fmt: skip
    runs[0].fit_seconds = timings.get("fit_default_seconds", 0.0)
    if scorer is not None:
        direct = rank_rows(scorer.scores(query_texts, query_emb), config.k)
        if not np.array_equal(direct[:, 0], runs[0].top_rows[:, 0]):
            notes.append("warning: the Retriever's top-1 differs from the scorer's own ranking for some queries.")
    runs.extend(baseline_runs(index_cases, data.query_cases, index_emb, query_emb, k=config.k, seed=config.seed))
    if config.ablations and scorer is not None:
        base = scorer.config
        for i, (name, (changes, desc)) in enumerate(ABLATIONS.items()):
            if progress is not None:
                progress("fit ablations", i, len(ABLATIONS))
            cfg = _with_changes(base, changes)
            run, _ = hybrid_run(name, desc, cfg, index_cases, index_emb, data.query_cases, query_emb,
                                k=config.k, seed=config.seed)  # fmt: skip
            runs.append(run)
        if progress is not None:
            progress("fit ablations", len(ABLATIONS), len(ABLATIONS))

    plan = BootstrapPlan.make(len(data.query_cases), config.bootstrap, config.seed, config.confidence)
    methods, per_query = [], {}
    for run in runs:
        summary, arrays = method_metrics(run, index_cases, data.query_cases, plan, ks=config.ks,
                                         rouge_stem=config.rouge_stem)  # fmt: skip
        methods.append(summary)
        per_query[run.name] = arrays
    comparisons = []
    for other in ("bm25", "tfidf", "minilm"):
        if other not in per_query or "default" not in per_query:
            continue
        for metric in ("label_jaccard@1", "rouge_l@1"):
            diff = per_query["default"][metric] - per_query[other][metric]
            lo, hi = plan.ci(diff)
            comparisons.append(
                {"a": "default", "b": other, "metric": metric, "mean_difference": float(diff.mean()), "ci95": [lo, hi]}
            )
    timings["embed_seconds"] = memo.encode_seconds
    timings["total_seconds"] = time.perf_counter() - t_start
    setup = {
        "encoder": {"name": memo.name, "fingerprint": memo.fingerprint, "spec": encoder_spec or {}},
        "index": {"kind": index.kind, "rows": len(index), "splits": list(index.splits)},
        "hybrid_config": config_to_dict(scorer.config) if scorer is not None else None,
        "eval_config": config_to_dict(config),
        "jaccard_of_two_empty_label_sets": 1.0,
        "tie_break": "lower index row first (stable sort)",
        "rouge": "ROUGE-L / ROUGE-2 F-measure, rouge-score tokenisation"
        + (" with Porter stemming" if config.rouge_stem else ""),
        "bootstrap": {"resamples": config.bootstrap, "confidence": config.confidence, "paired": True},
        "notes": notes,
    }
    data_info = {
        "index_rows": len(index_cases),
        "queries": len(data.query_cases),
        "removed_from_index": removed,
        "leakage_guard": "passed (ctrag.retrieval.guard via Retriever.search_cases, eval_split=val)",
    }
    return RetrievalEvalResult(
        methods=methods,
        comparisons=comparisons,
        label_model=label_model_metrics(scorer, data.query_cases) if scorer is not None else None,
        data=data_info,
        setup=setup,
        timings={k: round(v, 2) for k, v in timings.items()},
    )


def _with_changes(cfg: HybridConfig, changes: dict[str, Any]) -> HybridConfig:
    from ctrag.config import from_dict

    data = config_to_dict(cfg)
    data.update(changes)
    return from_dict(HybridConfig, data)
