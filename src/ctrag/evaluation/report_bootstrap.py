"""Bootstrap confidence intervals for report metrics, with every method scored on the same resampled reports.

Why sufficient statistics instead of re-running the scorers: corpus BLEU is not a mean of per-report values (it
pools clipped n-gram matches, n-gram totals and lengths over the corpus before dividing), micro clinical
efficacy pools true/false positives over reports and labels, and macro CE averages per-label F1 over the labels
present in the resample. Each of these is a function of per-report counts, so a resample is a weighted sum of
those counts: a ``(resamples, reports)`` matrix of draw counts times the per-report statistics gives every
resample's corpus figures in one product, exactly as the scorer would compute them on the resampled corpus, for
thousands of resamples in milliseconds. ROUGE (both protocols), CIDEr and NLTK METEOR are means of per-report
scores and resample as such.

Two figures are handled apart, and the output says so (:attr:`ReportStatistics.approximate`):

* CIDEr-D keeps the document frequencies of the full reference set; re-deriving them per resample would change
  every report's score and needs the scorer again.
* Java METEOR 1.5's corpus score aggregates alignment fragments over the corpus and is not a function of per-report
  scores, so it gets no interval; the mean of per-report METEOR is resampled instead, under its own name
  (``meteor_per_report_mean``): on the 100 shipped val reports it reads 0.30-0.35 where the corpus score reads
  0.19-0.29, so its interval must not be read as the corpus score's.

The paired design (one :class:`~ctrag.evaluation.stats.BootstrapPlan` for all methods) gives intervals for
differences between methods — AdaRAG-CT with and without retrieval, say — that are much narrower than the two
methods' own intervals would suggest, because report difficulty cancels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctrag.errors import InvalidInputError
from ctrag.evaluation.stats import BootstrapPlan

BLEU_ORDERS = 4
_COCO_TINY = 1e-15  # pycocoevalcap BleuScorer: added to matches and test length
_COCO_SMALL = 1e-9  # ... and to n-gram totals and reference length
CIDER_APPROXIMATION = "document frequencies of the full reference set kept fixed across resamples"
METEOR_PER_REPORT = "meteor_per_report_mean"
METEOR_APPROXIMATION = (
    "no interval for the corpus METEOR 1.5 (it pools alignment fragments over the corpus); "
    f"{METEOR_PER_REPORT} is the mean of per-report METEOR, with its own interval"
)


@dataclass
class ReportStatistics:
    """Per-report quantities from which one method's corpus metrics are recomputed on any resample of reports.

    ``bleu_kind`` says whose corpus-BLEU formula the counts feed: ``coco`` (pycocoevalcap's, with its tiny
    smoothing constants) or ``nmt`` (TensorFlow NMT's ``compute_bleu`` with add-one smoothing, as HF ``evaluate``).
    """

    bleu_kind: str
    bleu_matches: np.ndarray  # (n, 4) clipped n-gram matches of orders 1..4
    bleu_totals: np.ndarray  # (n, 4) hypothesis n-grams of orders 1..4
    hyp_len: np.ndarray  # (n,)
    ref_len: np.ndarray  # (n,)
    means: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> per-report scores; corpus = mean
    label_tp: np.ndarray | None = None  # (n, L) clinical-efficacy counts per report and label
    label_fp: np.ndarray | None = None
    label_fn: np.ndarray | None = None
    approximate: dict[str, str] = field(default_factory=dict)  # metric -> why its interval is approximate

    def __post_init__(self) -> None:
        if self.bleu_kind not in ("coco", "nmt"):
            raise InvalidInputError(f"unknown BLEU kind {self.bleu_kind!r}")
        n = self.n_reports
        shapes = [self.bleu_matches.shape, self.bleu_totals.shape, self.hyp_len.shape, self.ref_len.shape]
        if shapes != [(n, BLEU_ORDERS), (n, BLEU_ORDERS), (n,), (n,)]:
            raise InvalidInputError(f"report statistics: inconsistent shapes {shapes}")
        for name, values in self.means.items():
            if np.shape(values) != (n,):
                raise InvalidInputError(f"report statistics: {name} has shape {np.shape(values)}, expected ({n},)")
        given = [x for x in (self.label_tp, self.label_fp, self.label_fn) if x is not None]
        if given and (len(given) != 3 or len({x.shape for x in given}) != 1 or given[0].shape[0] != n):
            raise InvalidInputError("report statistics: label counts tp/fp/fn must all be given, with one row a report")

    @property
    def n_reports(self) -> int:
        return int(self.hyp_len.shape[0])

    def with_labels(self, ref_labels: np.ndarray, hyp_labels: np.ndarray) -> ReportStatistics:
        """These statistics plus clinical-efficacy counts from 0/1 label matrices ``(n, L)``."""
        ref, hyp = np.asarray(ref_labels).astype(bool), np.asarray(hyp_labels).astype(bool)
        if ref.shape != hyp.shape or ref.ndim != 2 or ref.shape[0] != self.n_reports:
            raise InvalidInputError(f"label matrices {ref.shape} / {hyp.shape} do not fit {self.n_reports} reports")
        self.label_tp = (ref & hyp).astype(np.float64)
        self.label_fp = (~ref & hyp).astype(np.float64)
        self.label_fn = (ref & ~hyp).astype(np.float64)
        return self


def draw_weights(plan: BootstrapPlan, n_reports: int) -> np.ndarray:
    """``(resamples, n)`` matrix: how often each report is drawn in each resample of ``plan``."""
    resamples = plan.indices.shape[0]
    weights = np.zeros((resamples, n_reports), dtype=np.float64)
    rows = np.repeat(np.arange(resamples), plan.indices.shape[1])
    np.add.at(weights, (rows, plan.indices.ravel()), 1.0)
    return weights


def _bleu(stats: ReportStatistics, weights: np.ndarray) -> dict[str, np.ndarray]:
    matches = weights @ stats.bleu_matches  # (B, 4)
    totals = weights @ stats.bleu_totals
    hyp_len = weights @ stats.hyp_len
    ref_len = weights @ stats.ref_len
    out: dict[str, np.ndarray] = {}
    if stats.bleu_kind == "coco":
        precision = (matches + _COCO_TINY) / (totals + _COCO_SMALL)
        log_cum = np.cumsum(np.log(precision), axis=1)
        ratio = (hyp_len + _COCO_TINY) / (ref_len + _COCO_SMALL)
        penalty = np.where(ratio < 1.0, np.exp(1.0 - 1.0 / ratio), 1.0)
        for n in range(1, BLEU_ORDERS + 1):
            out[f"bleu_{n}"] = np.exp(log_cum[:, n - 1] / n) * penalty
        return out
    precision = (matches + 1.0) / (totals + 1.0)  # add-one smoothing of every order (HF evaluate smooth=True)
    log_cum = np.cumsum(np.log(precision), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ref_len > 0, hyp_len / np.where(ref_len > 0, ref_len, 1.0), 0.0)
        penalty = np.where(ratio > 1.0, 1.0, np.where(ratio > 0, np.exp(1.0 - 1.0 / np.where(ratio > 0, ratio, 1)), 0))
    for n in range(1, BLEU_ORDERS + 1):
        out[f"bleu_{n}"] = np.exp(log_cum[:, n - 1] / n) * penalty
    return out


def _clinical_efficacy(stats: ReportStatistics, weights: np.ndarray) -> dict[str, np.ndarray]:
    assert stats.label_tp is not None and stats.label_fp is not None and stats.label_fn is not None
    tp, fp, fn = weights @ stats.label_tp, weights @ stats.label_fp, weights @ stats.label_fn  # (B, L)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    stp, sfp, sfn = tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1)
    out = {
        "precision_micro": ratio(stp, stp + sfp),
        "recall_micro": ratio(stp, stp + sfn),
        "f1_micro": ratio(2 * stp, 2 * stp + sfp + sfn),
    }
    active = (tp + fp + fn) > 0  # labels positive in the reference or the hypothesis of some drawn report
    count = active.sum(axis=1)
    for name, per_label in (
        ("precision_macro", ratio(tp, tp + fp)),
        ("recall_macro", ratio(tp, tp + fn)),
        ("f1_macro", ratio(2 * tp, 2 * tp + fp + fn)),
    ):
        total = np.where(active, per_label, 0.0).sum(axis=1)
        out[name] = np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
    return out


def corpus_values(stats: ReportStatistics, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every corpus metric on each weighted resample (rows of ``weights``); ``clinical_efficacy`` metrics are
    keyed ``ce_<name>``. A row of ones gives the full-corpus values."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != stats.n_reports:
        raise InvalidInputError(f"{w.shape[1]} weights for {stats.n_reports} reports")
    out = _bleu(stats, w)
    drawn = w.sum(axis=1)
    for name, values in stats.means.items():
        out[name] = (w @ np.asarray(values, dtype=np.float64)) / drawn
    if stats.label_tp is not None:
        out.update({f"ce_{k}": v for k, v in _clinical_efficacy(stats, w).items()})
    return out


def _interval(values: np.ndarray, confidence: float) -> list[float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [math.nan, math.nan]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def bootstrap_report_metrics(
    statistics: Mapping[str, ReportStatistics],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    reference: str | None = None,
) -> dict[str, Any]:
    """Percentile CIs of every metric of every method, and of each method's difference to ``reference``.

    All methods must score the same reports in the same order (one plan, paired resamples). Returns
    ``{"ci": {method: {metric: [lo, hi]}}, "point": {method: {metric: value}}, "difference": {method: {metric:
    {"value", "ci", "excludes_zero"}}}, "approximate": {metric: why}, ...}``; with fewer than two reports no
    interval is computed and ``ci`` is empty (a resample of one report is that report).
    """
    if not statistics:
        raise InvalidInputError("no methods to bootstrap")
    sizes = {name: s.n_reports for name, s in statistics.items()}
    if len(set(sizes.values())) != 1:
        raise InvalidInputError(f"methods score different numbers of reports: {sizes}")
    if reference is not None and reference not in statistics:
        raise InvalidInputError(f"reference method {reference!r} is not among {sorted(statistics)}")
    if not 0.0 < confidence < 1.0 or n_resamples < 0:
        raise InvalidInputError("bootstrap: confidence in (0, 1) and n_resamples >= 0 needed")
    n = next(iter(sizes.values()))
    ones = np.ones((1, n))
    point = {name: {k: float(v[0]) for k, v in corpus_values(s, ones).items()} for name, s in statistics.items()}
    approximate: dict[str, str] = {}
    for s in statistics.values():
        approximate.update(s.approximate)
    result: dict[str, Any] = {
        "n_reports": n,
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": confidence,
        "unit": "report",
        "reference": reference,
        "point": point,
        "ci": {},
        "difference": {},
        "approximate": approximate,
    }
    if n < 2 or n_resamples == 0:
        result["skipped"] = "fewer than two reports" if n < 2 else "no resamples asked for"
        return result
    plan = BootstrapPlan.make(n, n_resamples, seed, confidence)
    weights = draw_weights(plan, n)
    resampled = {name: corpus_values(s, weights) for name, s in statistics.items()}
    result["ci"] = {name: {k: _interval(v, confidence) for k, v in vals.items()} for name, vals in resampled.items()}
    if reference is not None:
        for name, vals in resampled.items():
            if name == reference:
                continue
            diffs: dict[str, Any] = {}
            for metric, values in vals.items():
                if metric not in resampled[reference]:
                    continue
                lo, hi = _interval(values - resampled[reference][metric], confidence)
                diffs[metric] = {
                    "value": point[name][metric] - point[reference][metric],
                    "ci": [lo, hi],
                    "excludes_zero": bool(lo > 0 or hi < 0),
                }
            result["difference"][name] = diffs
    return result
