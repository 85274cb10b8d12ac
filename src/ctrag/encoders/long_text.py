"""Reports longer than a text model's token window: truncate, or embed sentence windows and average them.

CT-RATE reports average about 1,800 characters (~420 WordPiece tokens on the shipped sample), while MiniLM reads
256 tokens; truncation silently drops the second half of most reports (often the impression). ``chunk-mean``
splits a report into consecutive sentence windows that each fit the window, embeds every window, and averages the
window vectors of a report (then re-normalises). Windows of *all* reports are embedded in one batched call, so the
cost is the number of windows, not the number of reports times a per-report overhead.

The sentence splitter is rule-based (no downloads: NLTK's punkt is unavailable offline). It splits on ``.``, ``!``,
``?`` or ``;`` followed by whitespace and on line breaks, and leaves decimals (``1.5 cm``) alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from ctrag.encoders.base import l2_normalise
from ctrag.errors import InvalidInputError

LongTextMode = Literal["truncate", "chunk-mean"]
LONG_TEXT_MODES: tuple[str, ...] = ("truncate", "chunk-mean")

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\s*\n+\s*")


def check_long_text_mode(mode: str) -> str:
    if mode not in LONG_TEXT_MODES:
        raise InvalidInputError(f"long_text must be one of {list(LONG_TEXT_MODES)}, got {mode!r}")
    return mode


def check_texts(texts: Sequence[str]) -> list[str]:
    """Reject what cannot be embedded meaningfully, naming the offending item."""
    if isinstance(texts, str):
        raise InvalidInputError("encode_text expects a list of strings, got a single str (wrap it in a list)")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"text #{i} is {type(text).__name__}, expected str")
        if not text.strip():
            raise InvalidInputError(f"text #{i} is empty or whitespace only; nothing to embed")
        out.append(text)
    return out


def split_sentences(text: str) -> list[str]:
    """Sentences of a report, whitespace-trimmed, empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def _split_words(sentence: str, n_parts: int) -> list[str]:
    words = sentence.split()
    size = max(1, math.ceil(len(words) / n_parts))
    return [" ".join(words[i : i + size]) for i in range(0, len(words), size)]


def chunk_texts(
    texts: Sequence[str], count_tokens: Callable[[list[str]], list[int]], max_tokens: int
) -> tuple[list[str], np.ndarray]:
    """Split each text into windows of whole sentences with at most ``max_tokens`` tokens each.

    Returns the windows of all texts in order and ``owner`` (index of the text each window belongs to). A text
    that already fits is one window (itself, unchanged), so short queries embed exactly as in ``truncate`` mode.
    A single sentence longer than the window is cut at word boundaries into near-equal parts.
    """
    if max_tokens < 8:
        raise ValueError(f"chunk_texts: max_tokens={max_tokens} is too small to hold a sentence")
    whole = count_tokens(list(texts))
    chunks: list[str] = []
    owner: list[int] = []
    long_ids = [i for i, n in enumerate(whole) if n > max_tokens]
    sentences = {i: split_sentences(texts[i]) for i in long_ids}
    flat = [s for i in long_ids for s in sentences[i]]
    lengths = iter(count_tokens(flat)) if flat else iter(())
    pieces: dict[int, list[tuple[str, int]]] = {}
    for i in long_ids:
        items: list[tuple[str, int]] = []
        for sent in sentences[i]:
            n = next(lengths)
            if n <= max_tokens:
                items.append((sent, n))
                continue
            parts = _split_words(sent, math.ceil(n / max_tokens) + 1)
            items.extend(zip(parts, count_tokens(parts), strict=True))
        pieces[i] = items
    for i, text in enumerate(texts):
        if i not in pieces:
            chunks.append(text)
            owner.append(i)
            continue
        current: list[str] = []
        used = 0
        for sent, n in pieces[i]:
            # WordPiece splits on whitespace first, so the tokens of joined sentences add up exactly.
            if current and used + n > max_tokens:
                chunks.append(" ".join(current))
                owner.append(i)
                current, used = [], 0
            current.append(sent)
            used += n
        if current:
            chunks.append(" ".join(current))
            owner.append(i)
    return chunks, np.asarray(owner, dtype=np.int64)


def mean_by_owner(chunk_vectors: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Average the (already normalised) window vectors of each text, then L2-normalise the means."""
    dim = chunk_vectors.shape[1]
    sums = np.zeros((n, dim), dtype=np.float64)
    np.add.at(sums, owner, chunk_vectors.astype(np.float64))
    counts = np.bincount(owner, minlength=n)
    if np.any(counts == 0):
        raise ValueError(f"mean_by_owner: texts {np.flatnonzero(counts == 0).tolist()} have no windows")
    return l2_normalise(sums / counts[:, None])
