"""Properties of the modality-gap diagnostic and of centring: on constructed arrays where the property is about
geometry, and on real report vectors (LSA of shipped CT-RATE reports) for the correction."""

from __future__ import annotations

import numpy as np
import pytest
from testsupport.lsa import LsaEncoder

from ctrag.errors import InvalidInputError
from ctrag.evaluation.modality_gap import centre_modalities, modality_gap, paired_recall, uniformity


@pytest.fixture(scope="module")
def report_vectors(small) -> np.ndarray:
    texts = [c.report_text for c in small.index_cases[:80]]
    return LsaEncoder(texts, dim=32).encode_text(texts)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_identical_sets_have_no_gap():
    x = _unit(np.random.default_rng(0), 40, 16)
    gap = modality_gap(x, x.copy())
    assert gap.gap_norm == pytest.approx(0.0, abs=1e-12)
    assert gap.centroid_cosine_distance == pytest.approx(0.0, abs=1e-9)
    assert gap.alignment == pytest.approx(0.0, abs=1e-12)
    assert gap.uniformity_a == pytest.approx(gap.uniformity_b)


def test_constant_shift_gives_a_gap_of_that_norm():
    rng = np.random.default_rng(1)
    x = _unit(rng, 30, 8)
    shift = rng.normal(size=8)
    gap = modality_gap(x + shift, x)
    assert gap.gap_norm == pytest.approx(float(np.linalg.norm(shift)), rel=1e-9)
    np.testing.assert_allclose(gap.gap_vector, shift, rtol=1e-9)
    # matched pairs are exactly the shift apart; within-modality geometry is unchanged
    assert gap.alignment == pytest.approx(float(shift @ shift), rel=1e-9)
    assert gap.uniformity_a == pytest.approx(gap.uniformity_b, rel=1e-9)


def test_uniformity_is_lower_for_spread_out_points():
    rng = np.random.default_rng(2)
    spread = _unit(rng, 200, 8)
    clustered = spread * 0.05 + np.eye(8)[0]
    clustered /= np.linalg.norm(clustered, axis=1, keepdims=True)
    assert uniformity(spread) < uniformity(clustered) - 1.0
    assert uniformity(np.ones((5, 3))) == pytest.approx(0.0)  # identical points: exp(0) everywhere


def test_centring_removes_the_gap_on_real_report_vectors(report_vectors):
    text = report_vectors
    rng = np.random.default_rng(3)
    # a "CT side" that is the report vectors pushed off along one direction and re-normalised: a gapped space
    offset = np.zeros(text.shape[1])
    offset[:8] = 0.6
    ct = text + offset + 0.05 * rng.normal(size=text.shape)
    ct /= np.linalg.norm(ct, axis=1, keepdims=True)
    before = modality_gap(ct, text)
    a, b = centre_modalities(ct, text)
    after = modality_gap(a, b)
    assert before.gap_norm > 0.3
    assert after.gap_norm < 0.1 * before.gap_norm
    assert after.alignment is not None and before.alignment is not None and after.alignment < before.alignment
    assert paired_recall(a, b)["recall@1"] >= paired_recall(ct, text)["recall@1"]


def test_unmatched_sets_have_no_alignment_and_bad_input_is_refused():
    rng = np.random.default_rng(4)
    assert modality_gap(_unit(rng, 5, 4), _unit(rng, 7, 4)).alignment is None
    with pytest.raises(InvalidInputError, match="dimensions differ"):
        modality_gap(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(InvalidInputError, match="NaN"):
        modality_gap(np.full((2, 2), np.nan), np.ones((2, 2)))
    with pytest.raises(InvalidInputError, match=r"\(n, d\)"):
        modality_gap(np.ones(4), np.ones((1, 4)))
