"""Lexical scorers over report text: Okapi BM25 and TF-IDF cosine, plus the tokenisers they share.

Both are baselines in ``ctrag evaluate retrieval`` and components of the hybrid scorer. They follow the scorer
contract of :mod:`ctrag.retrieval.retriever` (``scores(query_texts, query_embeddings, candidate_rows)``; the
embeddings are ignored) and persist as arrays (``.npz``) plus JSON, never pickles, so a saved index can be read
by another ctrag or scikit-learn version.

The formulas are written out here (sparse matrices, no fitted third-party objects) because the scorer must be
saved and reloaded exactly:

- BM25 follows the Okapi form used by the ``rank-bm25`` package (``BM25Okapi``): term weight
  ``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))``, ``idf = ln((N - n + 0.5) / (n + 0.5))``,
  negative idfs replaced by ``epsilon`` times the mean idf, and repeated query terms counted as often as they
  occur. With ``tokenizer="whitespace"`` the scores equal ``rank_bm25.BM25Okapi`` on ``text.lower().split()``
  (checked in the tests), the set-up the retrieval issue measured its BM25 baseline with.
- TF-IDF follows scikit-learn's ``TfidfVectorizer`` defaults (smoothed idf ``ln((1 + N) / (1 + df)) + 1``,
  optional ``1 + ln(tf)``, L2-normalised rows), so cosine = dot product.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from ctrag.config import config_to_dict, from_dict
from ctrag.errors import ConfigError, DataValidationError, InvalidInputError
from ctrag.utils.serialization import load_csr, read_meta, read_npz, save_csr, write_json, write_npz

TokenizerName = Literal["whitespace", "word", "alnum", "negation"]

_WORD = re.compile(r"(?u)\b\w\w+\b")
_ALNUM = re.compile(r"[a-z0-9]+")
# Sentence/clause boundaries for negation scope: sentence ends, line breaks and CT-RATE's findings/impression quote.
_SCOPE_SPLIT = re.compile(r"(?<=[.;:!?])\s+|\n+|\"")
# Cue words after which (or before which: "... was not detected") a CT-RATE sentence states absence or normality.
NEGATION_CUES: tuple[str, ...] = (
    "no", "not", "none", "without", "absent", "negative", "free", "normal", "unremarkable", "natural", "nor",
)  # fmt: skip
_NEG_RE = re.compile(r"\b(?:" + "|".join(NEGATION_CUES) + r")\b")


def tokens_whitespace(text: str) -> list[str]:
    """Lower-cased whitespace split (punctuation stays attached), the tokenisation of the issue's BM25 baseline."""
    return text.lower().split()


def tokens_word(text: str) -> list[str]:
    """scikit-learn's default: lower-cased runs of >= 2 word characters."""
    return _WORD.findall(text.lower())


def tokens_alnum(text: str) -> list[str]:
    """Lower-cased alphanumeric runs; the tokens of ``rouge-score`` without stemming."""
    return _ALNUM.findall(text.lower())


def tokens_negation(text: str) -> list[str]:
    """Alphanumeric tokens, prefixed ``n_`` inside a sentence that contains a negation cue (see below)."""
    return list(_negation_tuple(text))


@lru_cache(maxsize=8192)
def _negation_tuple(text: str) -> tuple[str, ...]:
    """Memoised: cross-fitting re-tokenises the same reports once per fold.

    Alphanumeric tokens, prefixed ``n_`` inside a sentence that contains a negation cue.

    CT-RATE reports list absent findings as often as present ones ("Pleural effusion-thickening was not
    detected."); a bag of words cannot tell them apart. Marking every token of a negated sentence (sentence-level
    scope, as in NegEx-style rules) lets a linear model weigh "effusion" and "n_effusion" separately. Measured in
    5-fold cross-validation on train.csv: label AUC 0.958 -> 0.968 (C=10).
    """
    out: list[str] = []
    for part in _SCOPE_SPLIT.split(text.lower()):
        toks = _ALNUM.findall(part)
        if not toks:
            continue
        if _NEG_RE.search(part):
            out.extend("n_" + t for t in toks)
        else:
            out.extend(toks)
    return tuple(out)


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "whitespace": tokens_whitespace,
    "word": tokens_word,
    "alnum": tokens_alnum,
    "negation": tokens_negation,
}


def get_tokenizer(name: str) -> Callable[[str], list[str]]:
    try:
        return TOKENIZERS[name]
    except KeyError:
        raise ConfigError(f"unknown tokenizer {name!r}; known: {sorted(TOKENIZERS)}") from None


def _ngrams(tokens: list[str], n_max: int) -> list[str]:
    if n_max <= 1:
        return tokens
    out = list(tokens)
    for n in range(2, n_max + 1):
        out.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return out


def _check_texts(texts: Sequence[str], where: str) -> list[str]:
    if isinstance(texts, str):
        raise InvalidInputError(f"{where}: expected a list of texts, got a single str (wrap it in a list)")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InvalidInputError(f"{where}: text #{i} is {type(t).__name__}, expected str")
    return out


def _check_rows(rows: np.ndarray | None, n: int, where: str) -> np.ndarray | None:
    if rows is None:
        return None
    idx = np.asarray(rows, dtype=np.int64).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise InvalidInputError(f"{where}: candidate rows must be in [0, {n}), got min {idx.min()} max {idx.max()}")
    return idx


def count_matrix(token_lists: Sequence[Sequence[str]], vocab: dict[str, int]) -> sp.csr_matrix:
    """(n_docs, len(vocab)) term counts; tokens outside ``vocab`` are dropped."""
    indptr = [0]
    indices: list[int] = []
    data: list[int] = []
    for toks in token_lists:
        counts = Counter(vocab[t] for t in toks if t in vocab)
        indices.extend(counts.keys())
        data.extend(counts.values())
        indptr.append(len(indices))
    m = sp.csr_matrix(
        (np.asarray(data, dtype=np.float64), np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
        shape=(len(token_lists), len(vocab)),
    )
    m.sort_indices()
    return m


# --------------------------------------------------------------------------------------------------------- BM25


@dataclass
class BM25Config:
    """Okapi BM25 parameters. ``k1`` saturates term frequency, ``b`` normalises by report length."""

    k1: float = 1.5
    b: float = 0.75
    epsilon: float = 0.25
    tokenizer: TokenizerName = "whitespace"

    def __post_init__(self) -> None:
        if self.k1 < 0:
            raise ConfigError(f"BM25Config: k1 must be >= 0, got {self.k1}")
        if not 0.0 <= self.b <= 1.0:
            raise ConfigError(f"BM25Config: b must be in [0, 1], got {self.b}")
        get_tokenizer(self.tokenizer)


class BM25Scorer:
    """BM25 over a fixed set of documents (the index rows), stored as a sparse (docs x terms) weight matrix."""

    kind = "bm25"

    def __init__(self, vocab: dict[str, int], weights: sp.csr_matrix, idf: np.ndarray, config: BM25Config) -> None:
        if weights.shape[1] != len(vocab) or idf.shape != (len(vocab),):
            raise DataValidationError(
                f"BM25Scorer: weights {weights.shape} / idf {idf.shape} disagree with {len(vocab)} terms"
            )
        self.vocab = vocab
        self.weights = weights.tocsr()
        self.idf = idf
        self.config = config
        self._tok = get_tokenizer(config.tokenizer)

    @property
    def n_docs(self) -> int:
        return int(self.weights.shape[0])

    @classmethod
    def fit(cls, texts: Sequence[str], config: BM25Config | None = None) -> BM25Scorer:
        config = config or BM25Config()
        docs = _check_texts(texts, "BM25Scorer.fit")
        if not docs:
            raise InvalidInputError("BM25Scorer.fit: no documents")
        tok = get_tokenizer(config.tokenizer)
        token_lists = [tok(t) for t in docs]
        vocab: dict[str, int] = {}
        for toks in token_lists:
            for t in toks:
                vocab.setdefault(t, len(vocab))
        tf = count_matrix(token_lists, vocab)
        n = tf.shape[0]
        lengths = np.asarray([len(t) for t in token_lists], dtype=np.float64)
        avg_len = float(lengths.mean()) if lengths.sum() > 0 else 1.0
        df = np.bincount(tf.indices, minlength=len(vocab)).astype(np.float64)
        idf = np.log(n - df + 0.5) - np.log(df + 0.5)
        if idf.size:
            floor = config.epsilon * float(idf.mean())
            idf = np.where(idf < 0, floor, idf)
        # Per-(doc, term) weight; a query's score is then a sparse dot product with its term counts.
        row_of_entry = np.repeat(np.arange(n), np.diff(tf.indptr))
        norm = config.k1 * (1.0 - config.b + config.b * lengths[row_of_entry] / avg_len)
        data = idf[tf.indices] * tf.data * (config.k1 + 1.0) / (tf.data + norm)
        weights = sp.csr_matrix((data, tf.indices.copy(), tf.indptr.copy()), shape=tf.shape)
        return cls(vocab, weights, idf, config)

    def query_matrix(self, query_texts: Sequence[str]) -> sp.csr_matrix:
        texts = _check_texts(query_texts, "BM25Scorer.scores")
        return count_matrix([self._tok(t) for t in texts], self.vocab)

    def scores(
        self,
        query_texts: Sequence[str],
        query_embeddings: np.ndarray | None = None,
        candidate_rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n_queries, n_candidates) BM25 scores (float64); higher = better. ``query_embeddings`` is ignored.

        Computed as ``(W[rows] @ Q.T).T``: the (large) document rows stay in CSR order and only the small query
        matrix is transposed, so a query costs one pass over the non-zeros of its candidate rows (a shortlist at
        scale) instead of a CSC copy of them per call. A single query (the retriever's shortlist path) is a dense
        vector: one sparse-times-vector pass, where a sparse product takes two. Each score sums the same products
        in the same (term) order as ``Q @ W.T``; the vector form only adds exact zeros.
        """
        rows = _check_rows(candidate_rows, self.n_docs, "BM25Scorer.scores")
        w = self.weights if rows is None else self.weights[rows]
        q = self.query_matrix(query_texts)
        if q.shape[0] == 1:
            return np.asarray(w @ q.toarray()[0], dtype=np.float64)[None, :]
        return np.ascontiguousarray((w @ q.T.tocsr()).toarray().T, dtype=np.float64)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        write_npz(folder / "bm25.npz", {**save_csr("weights", self.weights), "idf": self.idf})
        terms = sorted(self.vocab, key=self.vocab.__getitem__)
        write_json(folder / "bm25.json", {"kind": self.kind, "config": config_to_dict(self.config), "terms": terms})
        return folder

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BM25Scorer:
        folder = Path(directory)
        meta = read_meta(folder / "bm25.json", cls.kind)
        arrays = read_npz(folder / "bm25.npz")
        vocab = {t: i for i, t in enumerate(meta["terms"])}
        return cls(vocab, load_csr("weights", arrays), arrays["idf"], from_dict(BM25Config, meta["config"]))


# -------------------------------------------------------------------------------------------------------- TF-IDF


@dataclass
class TfidfConfig:
    """Vectoriser settings; defaults = scikit-learn's ``TfidfVectorizer()`` except ``ngram_max``.

    ``ngram_max=2`` (unigrams + bigrams) is the setting that reproduces the issue's TF-IDF baseline (top-1
    label-Jaccard 0.39 on val.csv); unigrams alone give 0.48 there, see docs/results/retrieval_eval.md.
    """

    tokenizer: TokenizerName = "word"
    ngram_max: int = 2
    min_df: int = 1
    sublinear_tf: bool = False

    def __post_init__(self) -> None:
        if self.ngram_max < 1:
            raise ConfigError(f"TfidfConfig: ngram_max must be >= 1, got {self.ngram_max}")
        if self.min_df < 1:
            raise ConfigError(f"TfidfConfig: min_df must be >= 1, got {self.min_df}")
        get_tokenizer(self.tokenizer)


class TfidfVectors:
    """A fitted TF-IDF vocabulary: text -> L2-normalised sparse row (shared by the scorer and the label model)."""

    def __init__(self, vocab: dict[str, int], idf: np.ndarray, config: TfidfConfig) -> None:
        if idf.shape != (len(vocab),):
            raise DataValidationError(f"TfidfVectors: idf {idf.shape} disagrees with {len(vocab)} terms")
        self.vocab = vocab
        self.idf = idf
        self.config = config
        self._tok = get_tokenizer(config.tokenizer)

    def _terms(self, text: str) -> list[str]:
        return _ngrams(self._tok(text), self.config.ngram_max)

    @classmethod
    def fit(cls, texts: Sequence[str], config: TfidfConfig | None = None) -> TfidfVectors:
        config = config or TfidfConfig()
        docs = _check_texts(texts, "TfidfVectors.fit")
        if not docs:
            raise InvalidInputError("TfidfVectors.fit: no documents")
        tok = get_tokenizer(config.tokenizer)
        term_lists = [_ngrams(tok(t), config.ngram_max) for t in docs]
        df: Counter[str] = Counter()
        for terms in term_lists:
            df.update(set(terms))
        kept = sorted(t for t, c in df.items() if c >= config.min_df)
        vocab = {t: i for i, t in enumerate(kept)}
        n = len(docs)
        dfs = np.asarray([df[t] for t in kept], dtype=np.float64)
        idf = np.log((1.0 + n) / (1.0 + dfs)) + 1.0
        return cls(vocab, idf, config)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        docs = _check_texts(texts, "TfidfVectors.transform")
        m = count_matrix([self._terms(t) for t in docs], self.vocab)
        if self.config.sublinear_tf:
            m.data = 1.0 + np.log(m.data)
        m = sp.csr_matrix(m.multiply(self.idf[None, :]))
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return sp.csr_matrix(sp.diags(scale) @ m)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        terms = sorted(self.vocab, key=self.vocab.__getitem__)
        return {"idf": self.idf}, {"config": config_to_dict(self.config), "terms": terms}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> TfidfVectors:
        vocab = {t: i for i, t in enumerate(meta["terms"])}
        return cls(vocab, np.asarray(arrays["idf"], dtype=np.float64), from_dict(TfidfConfig, meta["config"]))


class TfidfScorer:
    """Cosine similarity of TF-IDF vectors between queries and the fitted documents."""

    kind = "tfidf"

    def __init__(self, vectors: TfidfVectors, docs: sp.csr_matrix) -> None:
        if docs.shape[1] != len(vectors.vocab):
            raise DataValidationError("TfidfScorer: document matrix and vocabulary disagree")
        self.vectors = vectors
        self.docs = docs.tocsr()

    @property
    def n_docs(self) -> int:
        return int(self.docs.shape[0])

    @classmethod
    def fit(cls, texts: Sequence[str], config: TfidfConfig | None = None) -> TfidfScorer:
        vectors = TfidfVectors.fit(texts, config)
        return cls(vectors, vectors.transform(texts))

    def scores(
        self,
        query_texts: Sequence[str],
        query_embeddings: np.ndarray | None = None,
        candidate_rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n_queries, n_candidates) cosine similarities in [0, 1]; ``query_embeddings`` is ignored."""
        rows = _check_rows(candidate_rows, self.n_docs, "TfidfScorer.scores")
        d = self.docs if rows is None else self.docs[rows]
        q = self.vectors.transform(query_texts)
        return np.asarray((q @ d.T).toarray(), dtype=np.float64)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        arrays, meta = self.vectors.state()
        write_npz(folder / "tfidf.npz", {**arrays, **save_csr("docs", self.docs)})
        write_json(folder / "tfidf.json", {"kind": self.kind, **meta})
        return folder

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> TfidfScorer:
        folder = Path(directory)
        meta = read_meta(folder / "tfidf.json", cls.kind)
        arrays = read_npz(folder / "tfidf.npz")
        return cls(TfidfVectors.from_state(arrays, meta), load_csr("docs", arrays))
