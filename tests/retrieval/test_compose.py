"""Composed scores: weight validation (refuse bad, normalise good), weight 0 removes a term, convexity."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.errors import InvalidInputError
from ctrag.retrieval.compose import MixWeights, compose_scores, normalise_scores


def test_weights_are_normalised_to_sum_one() -> None:
    w = MixWeights.parse("text=2,volume=1")
    assert w.as_dict() == pytest.approx({"text": 2 / 3, "volume": 1 / 3})
    assert sum(w.as_dict().values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("text=-0.5,volume=1", ">= 0"),
        ("text=0,volume=0", "at least one weight must be > 0"),
        ("text=nan", "finite"),
        ("text=inf", "finite"),
        ("text", "NAME=WEIGHT"),
        ("text=a", "must be a number"),
        ("text=1,text=2", "given twice"),
        ("colour=1", "unknown term"),
    ],
)
def test_bad_weights_are_refused(spec: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        MixWeights.parse(spec, known=("text", "volume", "region"))


def test_weight_zero_removes_a_term(rng: np.random.Generator) -> None:
    text = rng.random(50)
    w = MixWeights.of({"text": 1.0, "volume": 0.0})
    assert w.active == ("text",)
    # The zero-weight term need not exist, and garbage in it never reaches the total.
    np.testing.assert_array_equal(compose_scores({"text": text}, w), text)
    np.testing.assert_array_equal(compose_scores({"text": text, "volume": np.full(50, np.nan)}, w), text)
    with pytest.raises(InvalidInputError, match="no scores for term"):
        compose_scores({"volume": text}, w)


def test_composition_is_convex_and_monotone(rng: np.random.Generator) -> None:
    a, b = rng.random((3, 40)), rng.random((3, 40))
    for wa in (0.0, 0.25, 0.5, 1.0):
        mix = compose_scores({"a": a, "b": b}, MixWeights.of({"a": wa, "b": 1 - wa}))
        assert np.all(mix >= np.minimum(a, b) - 1e-12) and np.all(mix <= np.maximum(a, b) + 1e-12)
    # Raising one term for one candidate never lowers its composed score.
    w = MixWeights.of({"a": 0.3, "b": 0.7})
    bumped = a.copy()
    bumped[0, 5] += 0.5
    assert compose_scores({"a": bumped, "b": b}, w)[0, 5] > compose_scores({"a": a, "b": b}, w)[0, 5]


def test_minmax_normalisation_per_query_makes_weights_scale_free(rng: np.random.Generator) -> None:
    a, b = rng.random((2, 30)), rng.random((2, 30))
    w = MixWeights.of({"a": 0.5, "b": 0.5})
    plain = compose_scores({"a": a, "b": b}, w, normalise="minmax")
    scaled = compose_scores({"a": 1000 * a + 7, "b": b}, w, normalise="minmax")
    np.testing.assert_allclose(plain, scaled)
    assert normalise_scores(np.array([3.0, 3.0]), "minmax").tolist() == [0.0, 0.0]
    with pytest.raises(InvalidInputError, match="shape"):
        compose_scores({"a": a, "b": b[:, :3]}, w)
