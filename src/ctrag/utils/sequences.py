"""Longest-common-subsequence similarity of token sequences: the ROUGE-L core shared by the hybrid retrieval
scorer and the report metrics, kept apart from either so neither imports the other's module."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def lcs_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence of two token-id sequences.

    Bit-parallel algorithm of Hyyrö (2004) / Allison & Dix (1986): one bit per position of ``a`` in a Python
    integer, updated once per token of ``b``; ~100x faster than the textbook dynamic programme in pure Python.
    """
    if not a or not b:
        return 0
    masks: dict[int, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def lcs_f1(a: Sequence[int], b: Sequence[int]) -> float:
    """ROUGE-L F1 of two token sequences: ``2 * LCS / (len(a) + len(b))`` (precision and recall combined)."""
    total = len(a) + len(b)
    return 0.0 if total == 0 else 2.0 * lcs_length(a, b) / total


def lcs_f1_many(query: Sequence[int], docs: Sequence[Sequence[int]]) -> np.ndarray:
    """``lcs_f1(query, d)`` for every ``d``; the query's bit masks are built once."""
    out = np.zeros(len(docs), dtype=np.float64)
    m = len(query)
    if m == 0:
        return out
    masks: dict[int, int] = {}
    for i, tok in enumerate(query):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << m) - 1
    for j, doc in enumerate(docs):
        if len(doc) == 0:
            continue
        v = full
        for tok in doc:
            u = v & masks.get(tok, 0)
            v = ((v + u) | (v - u)) & full
        out[j] = 2.0 * (m - bin(v).count("1")) / (m + len(doc))
    return out
