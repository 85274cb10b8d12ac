"""The 18-label CT-RATE extractor: sentence-level assertion rules + learned weights + calibrated probabilities.

Why this shape: CT-RATE's labels follow from which finding sentences a report asserts, and 800 training reports
are too few for a bag of words to learn negation scope (the earlier TF-IDF model reached macro-F1 0.74). Here
each report is cut into sentences, clauses and comma parts (:mod:`ctrag.labels.assertion`); every mention of a
label's concepts (:mod:`ctrag.labels.lexicon`) is counted by status — present, absent, uncertain — and by scope.
One logistic regression per label weighs those counts together with TF-IDF of status-marked tokens (so
vocabulary the lexicon misses still counts). Patient-level cross-validation on the training reports gives
out-of-fold logits, from which a Platt scaling per label (calibrated probabilities for the expected-Jaccard
scorer of :mod:`ctrag.retrieval.hybrid`) and a per-label F1-optimal threshold are fitted.

API used elsewhere: ``predict_proba(texts) -> (n, 18)``, ``predict(texts) -> (n, 18)`` 0/1 at the stored
thresholds, ``decision_function(texts)`` = calibrated logits. Stored as ``label_extractor.npz`` +
``label_extractor.json`` (arrays + JSON, no pickle) with a fingerprint over the arrays, the config and the rules,
so a model saved under other rules or altered files refuses to load.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ctrag.config import config_to_dict, from_dict
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import ConfigError, DataValidationError, InvalidInputError
from ctrag.labels import assertion, lexicon
from ctrag.labels.assertion import Scopes, status_of
from ctrag.labels.lexicon import LEXICON, concept_matches
from ctrag.utils.hashing import sha256_json
from ctrag.utils.serialization import read_meta, read_npz, write_json, write_npz

KIND = "ctrag-label-extractor"
FORMAT_VERSION = 1
#: Rule features per concept: present / absent / uncertain mentions in clauses, present in comma parts, present
#: in whole sentences (log1p of counts).
_PER_CONCEPT = 5
_STATUS_COL = {"present": 0, "absent": 1, "uncertain": 2}
_TOKEN = re.compile(r"[a-z0-9]+")
_PREFIX = {"present": "", "absent": "n_", "uncertain": "u_"}


@dataclass
class LabelExtractorConfig:
    """Regularisation, feature mix, calibration and thresholds (chosen by patient-level CV on train.csv).

    ``c``: inverse L2 strength per label; ``rule_weight``: scale of the rule counts against the unit-norm TF-IDF
    row (a larger scale = weaker penalty on the rule weights); ``cv_folds``: folds for the out-of-fold logits
    behind calibration and thresholds; ``tune_thresholds``: per-label F1-optimal threshold on those logits
    (else 0.5); ``threshold_range``: the thresholds tried (step 0.05), kept away from 0/1 so a label with few
    positives cannot pick an extreme one.
    """

    c: float = 1.0
    rule_weight: float = 2.0
    min_df: int = 2
    calibrate: bool = True
    cv_folds: int = 5
    tune_thresholds: bool = True
    threshold_range: tuple[float, float] = (0.2, 0.8)
    max_iter: int = 2000

    def __post_init__(self) -> None:
        if self.c <= 0 or self.rule_weight < 0:
            raise ConfigError(
                f"LabelExtractorConfig: need c > 0 and rule_weight >= 0, got {self.c}, {self.rule_weight}"
            )
        if self.cv_folds < 2:
            raise ConfigError(f"LabelExtractorConfig: cv_folds must be >= 2, got {self.cv_folds}")
        lo, hi = self.threshold_range
        if not 0.0 < lo <= hi < 1.0:
            raise ConfigError(f"LabelExtractorConfig: threshold_range must satisfy 0 < lo <= hi < 1, got {lo}, {hi}")


def rules_fingerprint() -> str:
    """Hash of everything that turns text into rule features: a stored model is valid only under the same rules."""
    return sha256_json(
        {
            "lexicon": {k: [[p.pattern for p in c] for c in v] for k, v in LEXICON.items()},
            "negation": list(assertion.NEGATION_CUES),
            "pseudo": list(assertion.PSEUDO_NEGATIONS),
            "uncertain": list(assertion.UNCERTAINTY_CUES),
            "split": [assertion._SENTENCE_SPLIT.pattern, assertion._CLAUSE_SPLIT.pattern],
            "per_concept": _PER_CONCEPT,
            "lexicon_module": lexicon.__name__,
        }
    )


def _rule_slices(labels: Sequence[str]) -> list[slice]:
    out, start = [], 0
    for lab in labels:
        width = (len(LEXICON[lab]) + 1) * _PER_CONCEPT  # each concept + "any concept"
        out.append(slice(start, start + width))
        start += width
    return out


def rule_features(texts: Sequence[str]) -> np.ndarray:
    """(n, sum over labels of (concepts + 1) * 5) log1p mention counts by status and scope."""
    width = _rule_slices(CT_RATE_LABELS)[-1].stop
    out = np.zeros((len(texts), width), dtype=np.float64)
    for i, text in enumerate(texts):
        out[i] = _features_of(text)[1]
    return out


def marked_tokens(text: str) -> list[str]:
    """Alphanumeric tokens prefixed by their clause's status (``n_`` absent, ``u_`` uncertain, bare if present)."""
    return list(_features_of(text)[0])


@lru_cache(maxsize=8192)
def _features_of(text: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Marked tokens and the rule-feature row of one report, memoised.

    Why memoised: the regexes are most of the cost, and fitting (cross-validation folds, the hybrid scorer's
    cross-fitting) featurises the same reports many times. The cached row is read-only.
    """
    sc = Scopes.of(text)
    clause_status = [status_of(c) for c in sc.clauses]
    tokens = tuple(_PREFIX[s] + t for c, s in zip(sc.clauses, clause_status, strict=True) for t in _TOKEN.findall(c))
    part_present = [p for p in sc.parts if status_of(p) == "present"]
    sent_present = [s for s in sc.sentences if status_of(s) == "present"]
    rows = []
    for lab in CT_RATE_LABELS:
        block = np.zeros((len(LEXICON[lab]) + 1, _PER_CONCEPT))
        for k, concept in enumerate(LEXICON[lab]):
            for clause, status in zip(sc.clauses, clause_status, strict=True):
                if concept_matches(concept, clause):
                    block[k, _STATUS_COL[status]] += 1
            block[k, 3] = sum(concept_matches(concept, p) for p in part_present)
            block[k, 4] = sum(concept_matches(concept, s) for s in sent_present)
        block[-1] = block[:-1].sum(0)
        rows.append(np.log1p(block).ravel())
    row = np.concatenate(rows)
    row.setflags(write=False)
    return tokens, row


def _tfidf_fit(docs: list[list[str]], min_df: int) -> tuple[list[str], np.ndarray]:
    df: Counter[str] = Counter()
    for d in docs:
        df.update(set(d))
    vocab = sorted(t for t, n in df.items() if n >= min_df)
    n = len(docs)
    idf = np.asarray([math.log((1 + n) / (1 + df[t])) + 1.0 for t in vocab], dtype=np.float64)
    return vocab, idf


def _tfidf_transform(docs: list[list[str]], index: dict[str, int], idf: np.ndarray) -> sp.csr_matrix:
    """Sublinear-tf, idf-weighted, L2-normalised rows (scikit-learn's TfidfVectorizer with sublinear_tf=True)."""
    rows, cols, vals = [], [], []
    for i, d in enumerate(docs):
        counts = Counter(index[t] for t in d if t in index)
        if not counts:
            continue
        js = np.fromiter(counts.keys(), dtype=np.int64)
        w = (1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64))) * idf[js]
        w /= np.linalg.norm(w)
        rows.extend([i] * js.size)
        cols.extend(js.tolist())
        vals.extend(w.tolist())
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(docs), idf.size), dtype=np.float64)


def _check_texts(texts: Sequence[str], where: str) -> list[str]:
    if isinstance(texts, str):
        raise InvalidInputError(f"{where}: expected a list of texts, got a single str (wrap it in a list)")
    out = list(texts)
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise InvalidInputError(f"{where}: text {bad[0]} is {type(out[bad[0]]).__name__}, not str")
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


def _group_folds(groups: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """Fold per row with whole groups (patients) per fold; seeded permutation of the sorted group ids."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[j]: i % n_folds for i, j in enumerate(order)}
    return np.asarray([fold_of[g] for g in groups], dtype=np.int64)


def _best_threshold(y: np.ndarray, p: np.ndarray, lo: float, hi: float) -> float:
    """F1-optimal threshold in [lo, hi] (step 0.05); ties go to the one nearest 0.5."""
    grid = np.round(np.arange(lo, hi + 1e-9, 0.05), 4)
    if y.sum() == 0:
        return 0.5
    best, best_key = 0.5, (-1.0, 0.0)
    for th in grid:
        pred = p >= th
        tp = float((pred & (y == 1)).sum())
        f1 = 2 * tp / max(1.0, float(pred.sum() + y.sum()))
        key = (round(f1, 9), -abs(th - 0.5))
        if key > best_key:
            best, best_key = float(th), key
    return best


class _Core:
    """The uncalibrated per-label logistic regressions over [TF-IDF | rule_weight * rule features]."""

    def __init__(self, vocab: list[str], idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray, rule_weight: float):
        self.vocab = vocab
        self.index = {t: i for i, t in enumerate(vocab)}
        self.idf = idf
        self.coef = coef
        self.intercept = intercept
        self.rule_weight = rule_weight

    @classmethod
    def fit(
        cls, docs: list[list[str]], rules: np.ndarray, y: np.ndarray, config: LabelExtractorConfig, seed: int
    ) -> _Core:
        from sklearn.linear_model import LogisticRegression  # only fitting needs scikit-learn

        vocab, idf = _tfidf_fit(docs, config.min_df)
        core = cls(vocab, idf, np.zeros((y.shape[1], 0)), np.zeros(y.shape[1]), config.rule_weight)
        x_text = _tfidf_transform(docs, core.index, idf)
        slices = _rule_slices(CT_RATE_LABELS)
        width = rules.shape[1]
        coef = np.zeros((y.shape[1], len(vocab) + width))
        intercept = np.zeros(y.shape[1])
        for j, sl in enumerate(slices):
            pos = int(y[:, j].sum())
            if pos in (0, len(y)):  # one class only: its smoothed prevalence
                prior = (pos + 0.5) / (len(y) + 1.0)
                intercept[j] = math.log(prior / (1.0 - prior))
                continue
            x = sp.hstack([x_text, sp.csr_matrix(config.rule_weight * rules[:, sl])]).tocsr()
            model = LogisticRegression(C=config.c, solver="liblinear", max_iter=config.max_iter, random_state=seed)
            model.fit(x, y[:, j])
            coef[j, : len(vocab)] = model.coef_[0, : len(vocab)]
            coef[j, len(vocab) + sl.start : len(vocab) + sl.stop] = model.coef_[0, len(vocab) :] * config.rule_weight
            intercept[j] = float(model.intercept_[0])
        core.coef, core.intercept = coef, intercept
        return core

    def logits(self, docs: list[list[str]], rules: np.ndarray) -> np.ndarray:
        x = sp.hstack([_tfidf_transform(docs, self.index, self.idf), sp.csr_matrix(rules)]).tocsr()
        return np.asarray(x @ self.coef.T, dtype=np.float64) + self.intercept[None, :]


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and offset of a 1-D logistic fit of labels on logits (Platt scaling with his smoothed targets)."""
    from sklearn.linear_model import LogisticRegression

    pos = int(y.sum())
    if pos in (0, len(y)):
        return 1.0, 0.0
    # Platt (1999): targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2) instead of 1/0 keep a separable fold finite.
    t_pos, t_neg = (pos + 1.0) / (pos + 2.0), 1.0 / (len(y) - pos + 2.0)
    x = np.concatenate([z, z])[:, None]
    target = np.concatenate([np.ones_like(z), np.zeros_like(z)])
    weight = np.concatenate([np.where(y == 1, t_pos, t_neg), np.where(y == 1, 1 - t_pos, 1 - t_neg)])
    model = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000).fit(x, target, sample_weight=weight)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


class LabelExtractor:
    """Report text -> calibrated probabilities of the 18 CT-RATE abnormalities (see the module docstring)."""

    def __init__(
        self,
        core: _Core,
        slope: np.ndarray,
        offset: np.ndarray,
        thresholds: np.ndarray,
        labels: Sequence[str] = CT_RATE_LABELS,
        config: LabelExtractorConfig | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        labels = tuple(labels)
        n = len(labels)
        if labels != CT_RATE_LABELS:
            raise DataValidationError("LabelExtractor: the lexicon covers exactly the 18 CT-RATE labels, in order")
        expected_cols = len(core.vocab) + _rule_slices(labels)[-1].stop
        if core.coef.shape != (n, expected_cols) or core.intercept.shape != (n,):
            raise DataValidationError(
                f"LabelExtractor: coef {core.coef.shape} does not fit {n} labels x {expected_cols} features"
            )
        for name, arr in (("slope", slope), ("offset", offset), ("thresholds", thresholds)):
            if np.asarray(arr).shape != (n,):
                raise DataValidationError(f"LabelExtractor: {name} must have shape ({n},)")
        self.core = core
        self.slope = np.asarray(slope, dtype=np.float64)
        self.offset = np.asarray(offset, dtype=np.float64)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.labels = labels
        self.config = config or LabelExtractorConfig()
        self.info = dict(info or {})

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        labels: Any,
        groups: Sequence[str] | None = None,
        config: LabelExtractorConfig | None = None,
        seed: int = 0,
    ) -> LabelExtractor:
        """Fit on report ``texts``, their (n, 18) 0/1 ``labels`` and optional patient ids ``groups``.

        ``groups`` keep a patient's reports in one cross-validation fold (calibration and thresholds must not be
        tuned on a report whose sibling trained the fold's model); without them each report is its own group.
        With fewer than 2 groups there is nothing to cross-validate: logits stay uncalibrated, thresholds 0.5.
        """
        config = config or LabelExtractorConfig()
        texts = _check_texts(texts, "LabelExtractor.fit")
        if not texts:
            raise InvalidInputError("LabelExtractor.fit: no training texts")
        y = np.asarray(labels)
        if y.shape != (len(texts), len(CT_RATE_LABELS)) or not np.isin(y, (0, 1)).all():
            raise InvalidInputError(
                f"LabelExtractor.fit: labels must be a 0/1 matrix of shape ({len(texts)}, {len(CT_RATE_LABELS)}), "
                f"got {y.shape}"
            )
        y = y.astype(np.int8)
        groups = list(groups) if groups is not None else [str(i) for i in range(len(texts))]
        if len(groups) != len(texts):
            raise InvalidInputError(f"LabelExtractor.fit: {len(groups)} groups for {len(texts)} texts")
        docs = [marked_tokens(t) for t in texts]
        rules = rule_features(texts)
        n_folds = min(config.cv_folds, len(set(groups)))
        slope, offset = np.ones(y.shape[1]), np.zeros(y.shape[1])
        thresholds = np.full(y.shape[1], 0.5)
        info: dict[str, Any] = {
            "n_train": len(texts),
            "n_groups": len(set(groups)),
            "positives": [int(v) for v in y.sum(0)],
            "seed": seed,
            "cv_folds": n_folds,
        }
        if n_folds >= 2 and (config.calibrate or config.tune_thresholds):
            folds = _group_folds(groups, n_folds, seed)
            oof = np.zeros(y.shape)
            for f in range(n_folds):
                tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
                core = _Core.fit([docs[i] for i in tr], rules[tr], y[tr], config, seed)
                oof[te] = core.logits([docs[i] for i in te], rules[te])
            if config.calibrate:
                for j in range(y.shape[1]):
                    slope[j], offset[j] = _platt(oof[:, j], y[:, j])
            p_oof = _sigmoid(oof * slope + offset)
            if config.tune_thresholds:
                lo, hi = config.threshold_range
                thresholds = np.asarray([_best_threshold(y[:, j], p_oof[:, j], lo, hi) for j in range(y.shape[1])])
            info["cv"] = cv_summary(y, p_oof, thresholds)
            info["cv_uncalibrated"] = cv_summary(y, _sigmoid(oof), np.full(y.shape[1], 0.5))
        else:  # too few patients to cross-validate: raw logits, threshold 0.5
            info["cv_folds"] = 0
        final = _Core.fit(docs, rules, y, config, seed)
        return cls(final, slope, offset, thresholds, CT_RATE_LABELS, config, info)

    # ------------------------------------------------------------------ prediction
    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 18) calibrated logits (log-odds of each label)."""
        texts = _check_texts(texts, "LabelExtractor")
        if not texts:
            return np.zeros((0, self.n_labels))
        z = self.core.logits([marked_tokens(t) for t in texts], rule_features(texts))
        return z * self.slope[None, :] + self.offset[None, :]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 18) calibrated probabilities that each label is present in each report."""
        return _sigmoid(self.decision_function(texts))

    def predict(self, texts: Sequence[str], threshold: float | None = None) -> np.ndarray:
        """(n, 18) 0/1 int8 labels at the stored per-label thresholds (or one given ``threshold``)."""
        th = self.thresholds if threshold is None else np.full(self.n_labels, float(threshold))
        return (self.predict_proba(texts) >= th[None, :]).astype(np.int8)

    # ------------------------------------------------------------------ persistence
    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            "idf": self.core.idf,
            "coef": self.core.coef,
            "intercept": self.core.intercept,
            "slope": self.slope,
            "offset": self.offset,
            "thresholds": self.thresholds,
        }

    def fingerprint(self) -> str:
        """Hash of the fitted arrays, vocabulary, config and rules: equal fingerprints, equal predictions."""
        arrays = {k: sha256_json(np.round(v, 12).tolist()) for k, v in self._arrays().items()}
        return sha256_json(
            {
                "arrays": arrays,
                "vocab": sha256_json(self.core.vocab),
                "config": config_to_dict(self.config),
                "labels": list(self.labels),
                "rules": rules_fingerprint(),
            }
        )

    def save(self, directory: str | os.PathLike[str]) -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        write_npz(folder / "label_extractor.npz", self._arrays())
        write_json(
            folder / "label_extractor.json",
            {
                "kind": KIND,
                "format_version": FORMAT_VERSION,
                "fingerprint": self.fingerprint(),
                "rules_fingerprint": rules_fingerprint(),
                "labels": list(self.labels),
                "config": config_to_dict(self.config),
                "vocab": self.core.vocab,
                "info": self.info,
            },
        )
        return folder

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LabelExtractor:
        folder = Path(directory)
        meta = read_meta(folder / "label_extractor.json", KIND, FORMAT_VERSION)
        if meta.get("rules_fingerprint") != rules_fingerprint():
            raise DataValidationError(
                f"{folder}: label extractor was fitted under other assertion rules or lexicon; refit it"
            )
        a = read_npz(folder / "label_extractor.npz")
        config = from_dict(LabelExtractorConfig, meta["config"])
        core = _Core(list(meta["vocab"]), a["idf"], a["coef"], a["intercept"], config.rule_weight)
        model = cls(core, a["slope"], a["offset"], a["thresholds"], meta["labels"], config, meta.get("info"))
        if model.fingerprint() != meta.get("fingerprint"):
            raise DataValidationError(f"{folder}: label extractor files disagree (fingerprint mismatch)")
        return model


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over all (report, label) pairs: bin-size-weighted |mean p - positive rate| in equal-width bins."""
    y, p = np.asarray(y, dtype=np.float64).ravel(), np.asarray(p, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / max(1, p.size))


def cv_summary(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    """Macro-F1 (at ``thresholds``), per-label F1, Brier score and ECE of probabilities ``p`` against ``y``."""
    pred = p >= thresholds[None, :]
    tp = (pred & (y == 1)).sum(0)
    denom = pred.sum(0) + y.sum(0)
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return {
        "macro_f1": float(f1.mean()),
        "f1": [round(float(v), 4) for v in f1],
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p),
    }
