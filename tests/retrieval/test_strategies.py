"""Strategies: correct picks, determinism under a seed, registry behaviour, MMR's one-case-per-patient rule."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.errors import InvalidInputError
from ctrag.index import CaseIndex
from ctrag.retrieval.strategies import (
    apply_strategy,
    get_strategy,
    list_strategies,
    register_strategy,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture()
def real_scores(train_index: CaseIndex) -> np.ndarray:
    """Cosine of every indexed report to the report of train_175 (its patient has a second scan, train_742)."""
    q = np.asarray(train_index.vectors[train_index.row_of("train_175")])
    return train_index.exact_scores(q)[0]


def test_registry_lists_the_five_strategies_and_rejects_unknown_names() -> None:
    assert {"nearest", "farthest", "random", "topk", "mmr"} <= set(list_strategies())
    with pytest.raises(InvalidInputError, match=r"unknown retrieval strategy 'closest'; known strategies: \[.*'mmr'"):
        get_strategy("closest")
    with pytest.raises(InvalidInputError, match="already registered"):
        register_strategy("nearest", lambda *a, **k: np.array([]))
    with pytest.raises(InvalidInputError, match="takes no options"):
        apply_strategy("nearest", np.ones(3), None, 1, _rng(), options={"mmr_lambda": 0.5})


def test_register_custom_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    from ctrag.retrieval import strategies

    monkeypatch.setattr(strategies, "_REGISTRY", dict(strategies._REGISTRY))  # keep the test's entry local

    @register_strategy("second-best", pool="top", shortlist_factor=2)
    def second_best(scores, mask, k, rng, *, groups=None, vectors=None, **options):  # type: ignore[no-untyped-def]
        order = np.argsort(-np.where(mask, scores, -np.inf), kind="stable")
        return order[1 : 1 + k]

    assert "second-best" in list_strategies()
    assert get_strategy("second-best").shortlist_size(3) == 6
    assert apply_strategy("second-best", np.array([0.1, 0.9, 0.5]), None, 1, _rng()).tolist() == [2]


def test_nearest_and_topk_return_best_scores_in_order(real_scores: np.ndarray, train_index: CaseIndex) -> None:
    rows = apply_strategy("nearest", real_scores, None, 5, _rng())
    assert rows.tolist() == np.argsort(-real_scores, kind="stable")[:5].tolist()
    assert [train_index.case(r).case_id for r in rows[:2]] == ["train_175", "train_742"]  # self, then same patient
    np.testing.assert_array_equal(apply_strategy("topk", real_scores, None, 5, _rng()), rows)


def test_farthest_really_is_the_lowest_score(real_scores: np.ndarray) -> None:
    rows = apply_strategy("farthest", real_scores, None, 4, _rng())
    assert real_scores[rows[0]] == real_scores.min()
    np.testing.assert_array_equal(real_scores[rows], np.sort(real_scores)[:4])
    assert np.all(np.diff(real_scores[rows]) >= 0)


def test_mask_and_unscored_rows_are_never_picked(real_scores: np.ndarray) -> None:
    mask = np.zeros(real_scores.size, dtype=bool)
    mask[10:20] = True
    scores = real_scores.copy()
    scores[12] = -np.inf  # e.g. a row outside a FAISS shortlist
    for name in ("nearest", "farthest", "random", "topk", "mmr"):
        rows = apply_strategy(name, scores, mask, 50, _rng())
        assert set(rows.tolist()) == set(range(10, 20)) - {12}, name  # k > candidates: all of them, once
        assert len(set(rows.tolist())) == rows.size


def test_ties_are_broken_by_position() -> None:
    scores = np.array([0.5, 0.9, 0.9, 0.1, 0.9])
    assert apply_strategy("nearest", scores, None, 2, _rng()).tolist() == [1, 2]
    assert apply_strategy("nearest", scores, None, 4, _rng()).tolist() == [1, 2, 4, 0]
    assert apply_strategy("farthest", np.array([0.2, 0.1, 0.1]), None, 2, _rng()).tolist() == [1, 2]


def test_random_is_deterministic_under_a_seed(real_scores: np.ndarray) -> None:
    a = apply_strategy("random", real_scores, None, 5, _rng(7))
    b = apply_strategy("random", real_scores, None, 5, _rng(7))
    c = apply_strategy("random", real_scores, None, 5, _rng(8))
    np.testing.assert_array_equal(a, b)
    assert a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 5
    # Over many seeds every candidate is drawn: it is not secretly "nearest".
    drawn = {int(r) for s in range(200) for r in apply_strategy("random", real_scores, None, 1, _rng(s))}
    assert len(drawn) > 0.9 * real_scores.size


def test_mmr_keeps_one_case_per_patient_and_diversifies(real_scores: np.ndarray, train_index: CaseIndex) -> None:
    groups = train_index.arrays.patient
    vectors = np.asarray(train_index.vectors)
    rows = apply_strategy("mmr", real_scores, None, 5, _rng(), groups=groups, vectors=vectors)
    assert rows[0] == train_index.row_of("train_175")  # the most relevant case comes first
    assert train_index.row_of("train_742") not in rows  # same patient as train_175: skipped
    assert len(set(groups[rows].tolist())) == rows.size
    # Over every query in the index, mmr never returns two cases of one patient; nearest sometimes does.
    nearest_dupes = 0
    for r in range(len(train_index)):
        s = train_index.exact_scores(vectors[r])[0]
        picked = apply_strategy("mmr", s, None, 4, _rng(), groups=groups, vectors=vectors)
        assert len(set(groups[picked].tolist())) == picked.size
        near = apply_strategy("nearest", s, None, 4, _rng())
        nearest_dupes += len(set(groups[near].tolist())) < near.size
    assert nearest_dupes > 0
    # Diversity: mmr's picks are less similar to each other than nearest's.
    near = apply_strategy("nearest", real_scores, None, 5, _rng())

    def mean_pairwise(idx: np.ndarray) -> float:
        sim = vectors[idx] @ vectors[idx].T
        return float(sim[np.triu_indices(idx.size, 1)].mean())

    low_lambda = apply_strategy(
        "mmr", real_scores, None, 5, _rng(), groups=groups, vectors=vectors, options={"mmr_lambda": 0.3}
    )
    assert mean_pairwise(low_lambda) < mean_pairwise(near)
    # lambda = 1 and no patient rule: plain relevance order, identical to nearest.
    pure = apply_strategy(
        "mmr", real_scores, None, 5, _rng(), vectors=vectors, options={"mmr_lambda": 1.0, "one_per_patient": False}
    )
    np.testing.assert_array_equal(pure, near)
    with pytest.raises(InvalidInputError, match="mmr_lambda must be in"):
        apply_strategy("mmr", real_scores, None, 5, _rng(), options={"mmr_lambda": 1.5})


def test_input_validation() -> None:
    with pytest.raises(InvalidInputError, match="k must be a positive integer"):
        apply_strategy("nearest", np.ones(3), None, 0, _rng())
    with pytest.raises(InvalidInputError, match="mask shape"):
        apply_strategy("nearest", np.ones(3), np.ones(4, bool), 1, _rng())
    with pytest.raises(InvalidInputError, match="scores must be 1-D"):
        apply_strategy("nearest", np.ones((2, 3)), None, 1, _rng())
    assert apply_strategy("random", np.ones(3), np.zeros(3, bool), 2, _rng()).size == 0
