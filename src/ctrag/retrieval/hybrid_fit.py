"""The cross-fitted weight search behind :meth:`ctrag.retrieval.hybrid.HybridScorer.fit`.

Why its own module: scoring a query (what every search runs) needs only the fitted weights; choosing them is a
one-off, costly protocol with its own rules, and the two change for different reasons.

Protocol, on the fitted (training) rows only: patient-level, seeded K-fold cross-fitting — per fold the label
model and BM25 are refitted without the held-out fold, whose labelled reports then query the rest — a grid
over weights and temperature, and the rule "highest mean top-1 label-Jaccard among settings whose top-1 text
overlap (LCS-F1) is not worse than the reference baseline's on the same queries, with one-sided confidence
``rouge_confidence_z``". The reference is BM25, or the best of BM25, TF-IDF and plain dense retrieval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrag.config import config_to_dict, from_dict
from ctrag.errors import ConfigError
from ctrag.retrieval.hybrid import (
    HybridConfig,
    HybridWeights,
    LcsTable,
    fit_label_model,
    normalise_max,
    topk_mask,
)
from ctrag.retrieval.label_agreement import expected_jaccard, label_jaccard_matrix
from ctrag.retrieval.lexical import BM25Scorer, TfidfScorer
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

STAGE = "hybrid weight search"


@dataclass
class FitRows:
    """The rows being fitted, as the search reads them (row-aligned arrays; ``labels`` valid where ``known``)."""

    texts: list[str]
    embeddings: np.ndarray  # (n, dim) float32, L2-normalised
    labels: np.ndarray  # (n, 18) int8
    known: np.ndarray  # (n,) bool: the row has real labels (only such rows serve as tuning queries)
    patients: list[str]
    table: LcsTable


@dataclass
class _FoldFeatures:
    """Everything the grid needs for one cross-fitting fold (queries x fold-train candidates)."""

    queries: np.ndarray  # case indices
    candidates: np.ndarray  # case indices
    label: dict[float, np.ndarray]  # temperature -> expected Jaccard
    bm25: np.ndarray
    dense: np.ndarray
    lcs: np.ndarray  # NaN outside the union of shortlists
    shortlist: dict[float, np.ndarray]  # temperature -> bool mask
    true_jaccard: np.ndarray  # (nq, nc) of real labels
    baseline_tops: dict[str, np.ndarray]  # baseline name -> candidate column of its top-1


def patient_folds(patients: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """Fold id per case; whole patients per fold, seeded permutation of the sorted patient ids."""
    unique = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: i % n_folds for i, j in enumerate(order)}
    return np.asarray([fold_of[p] for p in patients], dtype=np.int64)


def grid_settings(config: HybridConfig) -> list[HybridWeights]:
    """The distinct weight settings of ``config.grid`` with switched-off components fixed at 0 (label weight 1)."""
    g = config.grid
    out = []
    seen = set()
    for t in g.temperature if config.use_labels else (1.0,):
        for lc in g.lcs if config.use_lcs else (0.0,):
            for b in g.bm25 if config.use_bm25 else (0.0,):
                for d in g.dense if config.use_dense else (0.0,):
                    w = HybridWeights(label=1.0 if config.use_labels else 0.0, lcs=lc, bm25=b, dense=d, temperature=t)
                    key = (w.label, w.lcs, w.bm25, w.dense, w.temperature)
                    if w.label + w.lcs + w.bm25 + w.dense == 0 or key in seen:
                        continue
                    seen.add(key)
                    out.append(w)
    if not out:
        raise ConfigError("HybridConfig: the weight grid has no setting with a non-zero weight")
    return out


def _top1_overlap(feats: _FoldFeatures, top: np.ndarray, table: LcsTable) -> np.ndarray:
    """LCS-F1 of each query with its chosen candidate column ``top``; fills (and caches) values off the shortlist."""
    rows = np.arange(top.size)
    vals = feats.lcs[rows, top]
    for r in np.flatnonzero(np.isnan(vals)):
        vals[r] = table.f1(table.tokens(int(feats.queries[r])), feats.candidates[top[r] : top[r] + 1])[0]
        feats.lcs[r, top[r]] = vals[r]
    return vals


def _fold_features(
    data: FitRows, config: HybridConfig, seed: int, queries: np.ndarray, candidates: np.ndarray
) -> _FoldFeatures:
    """Component scores of one fold, with the label model and BM25 refitted on the fold's candidates only."""
    texts, y, known = data.texts, data.labels, data.known
    temps = config.grid.temperature if config.use_labels else (1.0,)
    cand_y = y[candidates].copy()
    label: dict[float, np.ndarray] = {}
    if config.use_labels:
        train = candidates[known[candidates]]
        lm = fit_label_model([texts[i] for i in train], y[train], [data.patients[i] for i in train], config, seed)
        unknown = candidates[~known[candidates]]
        if unknown.size:
            cand_y[~known[candidates]] = lm.predict([texts[i] for i in unknown])
        logits = lm.decision_function([texts[i] for i in queries])
        for t in temps:
            label[t] = expected_jaccard(1.0 / (1.0 + np.exp(-logits / t)), cand_y)
    q_texts = [texts[i] for i in queries]
    bm = BM25Scorer.fit([texts[i] for i in candidates], config.bm25).scores(q_texts)
    bm25 = normalise_max(bm)
    dense = np.asarray(data.embeddings[queries] @ data.embeddings[candidates].T, dtype=np.float64)
    shortlist: dict[float, np.ndarray] = {}
    base = np.zeros(bm25.shape, dtype=bool)
    if config.use_bm25:
        base |= topk_mask(bm25, config.rerank_k)
    if config.use_dense:
        base |= topk_mask(dense, config.rerank_k)
    for t in temps:
        shortlist[t] = base | (topk_mask(label[t], config.rerank_k) if config.use_labels else False)
    lcs = np.full(bm25.shape, np.nan)
    tops = {"bm25": bm.argmax(axis=1)}
    if config.rouge_reference == "best-baseline":
        tfidf = TfidfScorer.fit([texts[i] for i in candidates]).scores(q_texts)
        tops["tfidf"] = tfidf.argmax(axis=1)
        tops["dense"] = dense.argmax(axis=1)
    if config.use_lcs:
        union = np.zeros(bm25.shape, dtype=bool)
        for m in shortlist.values():
            union |= m
        for r, qi in enumerate(queries):
            cols = np.flatnonzero(union[r])
            lcs[r, cols] = data.table.f1(data.table.tokens(int(qi)), candidates[cols])
    true_j = label_jaccard_matrix(y[queries], y[candidates])
    return _FoldFeatures(queries, candidates, label, bm25, dense, lcs, shortlist, true_j, tops)


def _setting_top1(feats: _FoldFeatures, w: HybridWeights) -> np.ndarray:
    """Candidate column each fold query ranks first under weights ``w`` (LCS only inside the shortlist)."""
    total = w.bm25 * feats.bm25 + w.dense * feats.dense
    if w.label:
        total = total + w.label * feats.label[w.temperature]
    if w.lcs:
        mask = feats.shortlist[w.temperature]
        total = np.where(mask, total + w.lcs * np.nan_to_num(feats.lcs), -np.inf)
    return np.asarray(total.argmax(axis=1))


def search_weights(
    data: FitRows,
    config: HybridConfig,
    seed: int,
    n_folds: int,
    progress: ProgressFn | None = None,
) -> tuple[HybridWeights, dict[str, Any]]:
    """Choose the weights by the module's rule; returns them and the ``selection`` record (grid, baselines, rule)."""
    folds = patient_folds(data.patients, n_folds, seed)
    rng = np.random.default_rng(seed)
    per_fold = None if config.max_tuning_queries is None else math.ceil(config.max_tuning_queries / n_folds)
    settings = grid_settings(config)
    jac: list[list[np.ndarray]] = [[] for _ in settings]
    rouge: list[list[np.ndarray]] = [[] for _ in settings]
    ref_j: dict[str, list[np.ndarray]] = {}
    ref_r: dict[str, list[np.ndarray]] = {}
    for f in range(n_folds):
        if progress is not None:
            progress(STAGE, f, n_folds)
        queries = np.flatnonzero((folds == f) & data.known)
        if per_fold is not None and queries.size > per_fold:
            queries = np.sort(rng.choice(queries, per_fold, replace=False))
        candidates = np.flatnonzero(folds != f)
        if queries.size == 0 or candidates.size == 0:
            continue
        feats = _fold_features(data, config, seed, queries, candidates)
        rows = np.arange(queries.size)
        for name, top in feats.baseline_tops.items():
            ref_j.setdefault(name, []).append(feats.true_jaccard[rows, top])
            ref_r.setdefault(name, []).append(_top1_overlap(feats, top, data.table))
        for s, w in enumerate(settings):
            top = _setting_top1(feats, w)
            jac[s].append(feats.true_jaccard[rows, top])
            rouge[s].append(_top1_overlap(feats, top, data.table))
    if progress is not None:
        progress(STAGE, n_folds, n_folds)
    if not ref_j:
        logger.warning("HybridScorer.fit: no fold had labelled queries; using the configured weights")
        return config.effective_weights(config.weights), {"searched": False}
    return _select(settings, jac, rouge, ref_j, ref_r, config, seed, n_folds)


def _select(
    settings: list[HybridWeights],
    jac: list[list[np.ndarray]],
    rouge: list[list[np.ndarray]],
    ref_j: dict[str, list[np.ndarray]],
    ref_r: dict[str, list[np.ndarray]],
    config: HybridConfig,
    seed: int,
    n_folds: int,
) -> tuple[HybridWeights, dict[str, Any]]:
    """Apply the selection rule to the per-query cross-fitted top-1 results of every setting and baseline."""
    baselines = {
        name: {
            "label_jaccard": float(np.concatenate(ref_j[name]).mean()),
            "lcs_f1": float(np.concatenate(rs).mean()),
        }
        for name, rs in ref_r.items()
    }
    ref_name = max(baselines, key=lambda n: baselines[n]["lcs_f1"])
    rj, rr = np.concatenate(ref_j[ref_name]), np.concatenate(ref_r[ref_name])
    table_rows = []
    for w, js, rs in zip(settings, jac, rouge, strict=True):
        j, r = np.concatenate(js), np.concatenate(rs)
        diff = r - rr
        se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else 0.0
        table_rows.append(
            {
                "weights": config_to_dict(w),
                "label_jaccard": float(j.mean()),
                "lcs_f1": float(r.mean()),
                "lcs_f1_minus_reference": float(diff.mean()),
                "lcs_f1_minus_reference_se": se,
                "admissible": bool(diff.mean() - config.rouge_confidence_z * se >= 0.0),
            }
        )
    admissible = [row for row in table_rows if row["admissible"]]
    if admissible:
        best = max(admissible, key=lambda row: (round(row["label_jaccard"], 9), row["lcs_f1"]))
        rule = f"max label-Jaccard s.t. LCS-F1 >= {ref_name}'s (one-sided z = {config.rouge_confidence_z:g})"
    else:
        best = max(table_rows, key=lambda row: (row["lcs_f1"], row["label_jaccard"]))
        rule = f"no setting matched {ref_name}'s text overlap; took the highest LCS-F1"
        logger.warning("HybridScorer.fit: %s", rule)
    chosen = from_dict(HybridWeights, best["weights"])
    selection = {
        "searched": True,
        "rule": rule,
        "folds": n_folds,
        "seed": seed,
        "tuning_queries": int(rj.size),
        "reference": ref_name,
        "baselines": baselines,
        "chosen": best,
        "grid": table_rows,
    }
    logger.info(
        "hybrid weights %s: CV label-Jaccard %.3f, LCS-F1 %.3f (reference %s: %.3f, %.3f)",
        best["weights"],
        best["label_jaccard"],
        best["lcs_f1"],
        ref_name,
        rj.mean(),
        rr.mean(),
    )
    return chosen, selection
