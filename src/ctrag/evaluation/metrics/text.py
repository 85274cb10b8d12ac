"""ROUGE-L and ROUGE-N F-measures between report pairs, fast enough to score every method of a table.

Definitions are Lin (2004), "ROUGE: A Package for Automatic Evaluation of Summaries", with the tokenisation of
Google's ``rouge-score`` package (lower-case, non-alphanumerics -> spaces, Porter stemming of tokens longer than 3
characters when ``stem=True``), so the values equal ``rouge_score.rouge_scorer.RougeScorer(["rougeL"],
use_stemmer=stem)`` F-measures (checked in tests/evaluation/metrics/test_text.py). The longest common subsequence
uses the bit-parallel algorithm in :func:`ctrag.utils.sequences.lcs_length`, and each distinct text is
tokenised once, which makes a 100-query table ~100x faster than calling ``RougeScorer.score`` pair by pair.

Note that pycocoevalcap's ROUGE-L (used for report generation in :mod:`ctrag.evaluation.report_metrics`) is a
different variant (beta = 1.2, its own tokenisation); numbers from the two are not interchangeable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from ctrag.errors import InvalidInputError, MissingDependencyError
from ctrag.utils.sequences import lcs_length


def _rouge_tokenizer(stem: bool) -> Callable[[str], list[str]]:
    try:
        from rouge_score import tokenizers
    except ImportError as exc:  # the eval extra
        raise MissingDependencyError(
            "ROUGE needs the rouge-score package: pip install 'ctrag[eval]' (or rouge-score)"
        ) from exc
    tok = tokenizers.DefaultTokenizer(use_stemmer=stem)
    return tok.tokenize


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise InvalidInputError("ROUGE: expected lists of texts, got a single str")
    if len(references) != len(hypotheses):
        raise InvalidInputError(f"ROUGE: {len(references)} references but {len(hypotheses)} hypotheses")


class _Vocab:
    """Text -> token ids, each distinct text tokenised once."""

    def __init__(self, tokenize: Callable[[str], list[str]]) -> None:
        self.tokenize = tokenize
        self.ids: dict[str, int] = {}
        self.memo: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        if text not in self.memo:
            self.memo[text] = [self.ids.setdefault(t, len(self.ids)) for t in self.tokenize(text)]
        return self.memo[text]


def f_measure(overlap: float, n_ref: int, n_hyp: int) -> float:
    """F1 of precision ``overlap / n_hyp`` and recall ``overlap / n_ref`` (0 when either side is empty)."""
    if overlap <= 0 or n_ref == 0 or n_hyp == 0:
        return 0.0
    p, r = overlap / n_hyp, overlap / n_ref
    return 2.0 * p * r / (p + r)


def rouge_l(references: Sequence[str], hypotheses: Sequence[str], *, stem: bool = True) -> np.ndarray:
    """Per-pair ROUGE-L F-measure (longest common subsequence), float64 array of ``len(references)``."""
    _check_pairs(references, hypotheses)
    vocab = _Vocab(_rouge_tokenizer(stem))
    out = np.zeros(len(references), dtype=np.float64)
    for i, (ref, hyp) in enumerate(zip(references, hypotheses, strict=True)):
        a, b = vocab(ref), vocab(hyp)
        out[i] = f_measure(lcs_length(a, b), len(a), len(b))
    return out


def _ngrams(tokens: list[int], n: int) -> Counter[tuple[int, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(references: Sequence[str], hypotheses: Sequence[str], n: int = 2, *, stem: bool = True) -> np.ndarray:
    """Per-pair ROUGE-N F-measure (clipped n-gram overlap), float64 array of ``len(references)``."""
    _check_pairs(references, hypotheses)
    if n < 1:
        raise InvalidInputError(f"ROUGE-N: n must be >= 1, got {n}")
    vocab = _Vocab(_rouge_tokenizer(stem))
    out = np.zeros(len(references), dtype=np.float64)
    for i, (ref, hyp) in enumerate(zip(references, hypotheses, strict=True)):
        a, b = _ngrams(vocab(ref), n), _ngrams(vocab(hyp), n)
        overlap = sum((a & b).values())
        out[i] = f_measure(overlap, sum(a.values()), sum(b.values()))
    return out
