"""Long reports vs a token window: the sentence splitter, sentence windows and their mean, on real CT-RATE
reports tokenised by the packaged MiniLM."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.encoders.long_text import (
    LONG_TEXT_MODES,
    check_long_text_mode,
    check_texts,
    chunk_texts,
    mean_by_owner,
    split_sentences,
)
from ctrag.errors import InvalidInputError


def test_sentence_splitter_keeps_decimals_and_breaks():
    text = "A 1.5 cm nodule is seen. No effusion; heart normal.\nImpression: nodule."
    assert split_sentences(text) == ["A 1.5 cm nodule is seen.", "No effusion;", "heart normal.", "Impression: nodule."]


def test_chunk_windows_fit_and_cover_every_sentence(minilm, ct_rate_reports):
    limit = minilm.max_tokens
    assert limit == 254  # 256 positions minus [CLS] and [SEP]
    lengths = minilm.count_tokens(ct_rate_reports)
    assert max(lengths) > limit, "the sample must contain reports longer than the window"
    chunks, owner = chunk_texts(ct_rate_reports, minilm.count_tokens, limit)
    assert max(minilm.count_tokens(chunks)) <= limit
    assert np.all(np.diff(owner) >= 0) and set(owner.tolist()) == set(range(len(ct_rate_reports)))
    for i, text in enumerate(ct_rate_reports):
        joined = " ".join(chunks[j] for j in np.flatnonzero(owner == i))
        assert " ".join(split_sentences(joined)) == " ".join(split_sentences(text))
    # short reports stay a single, unchanged window
    short = [i for i, n in enumerate(lengths) if n <= limit]
    assert short and all(chunks[np.flatnonzero(owner == i)[0]] == ct_rate_reports[i] for i in short)


def test_overlong_sentence_is_cut_at_words(minilm):
    sentence = " ".join(["consolidation"] * 400) + "."
    chunks, owner = chunk_texts([sentence], minilm.count_tokens, 50)
    assert len(chunks) > 1 and max(minilm.count_tokens(chunks)) <= 50 and set(owner.tolist()) == {0}


def test_modes_and_text_checks():
    assert [check_long_text_mode(m) for m in LONG_TEXT_MODES] == ["truncate", "chunk-mean"]
    with pytest.raises(InvalidInputError, match="long_text must be one of"):
        check_long_text_mode("summarise")
    assert check_texts(("a", "b")) == ["a", "b"]
    with pytest.raises(InvalidInputError, match="single str"):
        check_texts("a report")
    with pytest.raises(InvalidInputError, match="text #2 is int"):
        check_texts(["a", "b", 3])  # type: ignore[list-item]


def test_window_must_hold_a_sentence(minilm):
    with pytest.raises(ValueError, match="too small"):
        chunk_texts(["Nodule."], minilm.count_tokens, 4)


def test_mean_by_owner_renormalises_and_refuses_texts_without_windows():
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    out = mean_by_owner(vecs, np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(out, [[2**-0.5, 2**-0.5], [1.0, 0.0]], atol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match=r"texts \[1\] have no windows"):
        mean_by_owner(vecs[:2], np.array([0, 0]), 2)
