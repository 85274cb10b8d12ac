"""The 18-label report classifier: negation-aware TF-IDF features + one logistic regression per CT-RATE label.

Why this model: the hybrid retriever needs, for any query report, calibrated probabilities of the 18 CT-RATE
abnormalities, cheaply on 2 CPU cores and without downloads. A bag of words fails on CT-RATE's many negated
findings ("Pleural effusion-thickening was not detected"), so tokens of negated sentences are marked
(:func:`ctrag.retrieval.lexical.tokens_negation`). Choices measured in patient-level 5-fold cross-validation on
train.csv only (unigrams beat uni+bigrams; C = 30 balances AUC and the retrieval trade-off; unweighted classes
keep probabilities calibrated, which the expected-Jaccard score in :mod:`ctrag.retrieval.hybrid` relies on).

``predict_proba(texts) -> (n, 18)`` is public so report evaluation can reuse the model as a label extractor
(clinical efficacy over the 18 labels). The fitted model is stored as arrays + JSON (coefficients, intercepts,
idf, vocabulary), so loading needs neither pickle nor scikit-learn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctrag.config import config_to_dict, from_dict
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import ConfigError, DataValidationError, InvalidInputError
from ctrag.retrieval.lexical import TfidfConfig, TfidfVectors
from ctrag.utils.serialization import read_meta, read_npz, write_json, write_npz

KIND = "ctrag-label-model"
FORMAT_VERSION = 1


@dataclass
class LabelModelConfig:
    """Features and regularisation of the label model.

    ``c``: inverse L2 strength of each logistic regression; ``class_weight="balanced"`` raises macro-F1 at 0.5
    but inflates probabilities of rare labels, so it is off by default.
    """

    c: float = 30.0
    tokenizer: Literal["negation", "alnum", "word"] = "negation"
    ngram_max: int = 1
    min_df: int = 2
    sublinear_tf: bool = True
    class_weight: Literal["none", "balanced"] = "none"
    max_iter: int = 1000

    def __post_init__(self) -> None:
        if self.c <= 0:
            raise ConfigError(f"LabelModelConfig: c must be > 0, got {self.c}")
        if self.max_iter < 1:
            raise ConfigError(f"LabelModelConfig: max_iter must be >= 1, got {self.max_iter}")

    def tfidf(self) -> TfidfConfig:
        return TfidfConfig(
            tokenizer=self.tokenizer, ngram_max=self.ngram_max, min_df=self.min_df, sublinear_tf=self.sublinear_tf
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


def check_label_matrix(labels: Any, n: int, n_labels: int, where: str) -> np.ndarray:
    """(n, n_labels) 0/1 int8 matrix, or a clear error naming what is wrong."""
    y = np.asarray(labels)
    if y.shape != (n, n_labels):
        raise InvalidInputError(f"{where}: labels must have shape ({n}, {n_labels}), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise InvalidInputError(f"{where}: labels must be 0/1")
    return y.astype(np.int8)


class LabelModel:
    """Multi-label report classifier over ``labels`` (the 18 CT-RATE abnormalities by default)."""

    def __init__(
        self,
        vectors: TfidfVectors,
        coef: np.ndarray,
        intercept: np.ndarray,
        labels: Sequence[str] = CT_RATE_LABELS,
        config: LabelModelConfig | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        labels = tuple(labels)
        if coef.shape != (len(labels), len(vectors.vocab)) or intercept.shape != (len(labels),):
            raise DataValidationError(
                f"LabelModel: coef {coef.shape} / intercept {intercept.shape} do not fit "
                f"{len(labels)} labels x {len(vectors.vocab)} terms"
            )
        self.vectors = vectors
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.labels = labels
        self.config = config or LabelModelConfig()
        self.info = dict(info or {})

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        labels: Any,
        config: LabelModelConfig | None = None,
        seed: int = 0,
        label_names: Sequence[str] = CT_RATE_LABELS,
    ) -> LabelModel:
        """Fit on report ``texts`` and their (n, n_labels) 0/1 ``labels``.

        A label with only one class in the training data gets a constant probability (its smoothed prevalence)
        instead of failing, so small or unlucky training folds still give a usable model.
        """
        from sklearn.linear_model import LogisticRegression  # heavy import, only needed for fitting

        config = config or LabelModelConfig()
        if isinstance(texts, str):
            raise InvalidInputError("LabelModel.fit: expected a list of texts, got a single str")
        texts = list(texts)
        if not texts:
            raise InvalidInputError("LabelModel.fit: no training texts")
        y = check_label_matrix(labels, len(texts), len(label_names), "LabelModel.fit")
        vectors = TfidfVectors.fit(texts, config.tfidf())
        x = vectors.transform(texts)
        coef = np.zeros((y.shape[1], x.shape[1]), dtype=np.float64)
        intercept = np.zeros(y.shape[1], dtype=np.float64)
        for j in range(y.shape[1]):
            pos = int(y[:, j].sum())
            if pos in (0, len(texts)):
                prior = (pos + 0.5) / (len(texts) + 1.0)
                intercept[j] = np.log(prior / (1.0 - prior))
                continue
            model = LogisticRegression(
                C=config.c,
                solver="liblinear",
                max_iter=config.max_iter,
                class_weight="balanced" if config.class_weight == "balanced" else None,
                random_state=seed,
            )
            model.fit(x, y[:, j])
            coef[j] = model.coef_[0]
            intercept[j] = float(model.intercept_[0])
        info = {"n_train": len(texts), "positives": [int(v) for v in y.sum(axis=0)], "seed": seed}
        return cls(vectors, coef, intercept, label_names, config, info)

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        """(n, n_labels) logits."""
        x = self.vectors.transform(texts)
        return np.asarray(x @ self.coef.T, dtype=np.float64) + self.intercept[None, :]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, n_labels) probabilities that each label is present in each report."""
        return _sigmoid(self.decision_function(texts))

    def predict(self, texts: Sequence[str], threshold: float = 0.5) -> np.ndarray:
        """(n, n_labels) 0/1 int8 labels at ``threshold``."""
        return (self.predict_proba(texts) >= threshold).astype(np.int8)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        arrays, meta = self.vectors.state()
        write_npz(folder / "label_model.npz", {**arrays, "coef": self.coef, "intercept": self.intercept})
        write_json(
            folder / "label_model.json",
            {
                "kind": KIND,
                "format_version": FORMAT_VERSION,
                "labels": list(self.labels),
                "config": config_to_dict(self.config),
                "info": self.info,
                "vectors": meta,
            },
        )
        return folder

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LabelModel:
        folder = Path(directory)
        meta = read_meta(folder / "label_model.json", KIND, FORMAT_VERSION)
        arrays = read_npz(folder / "label_model.npz")
        vectors = TfidfVectors.from_state(arrays, meta["vectors"])
        return cls(
            vectors,
            arrays["coef"],
            arrays["intercept"],
            meta["labels"],
            from_dict(LabelModelConfig, meta["config"]),
            meta.get("info"),
        )
