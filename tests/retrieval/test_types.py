"""``ctrag.retrieval.types``: the value types every retrieval path hands around. ``Hit`` names its case and is
immutable; ``CaseFilter`` by default lets only the train split through (so nothing that feeds generation or
evaluation retrieves a held-out case unless asked), holds no conditions otherwise, and is hashable/immutable.
The filter's logic (``candidate_mask``) is tested in test_filters.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ctrag.data.case import Case
from ctrag.index import CaseIndex
from ctrag.retrieval.filters import candidate_mask
from ctrag.retrieval.types import CaseFilter, Hit


def test_hit_names_its_case_and_defaults_to_the_nearest_strategy(all_cases: tuple[Case, ...]) -> None:
    case = all_cases[0]
    hit = Hit(case=case, score=0.8, rank=0)
    assert hit.case_id == case.case_id and hit.strategy == "nearest" and hit.details == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        hit.score = 1.0  # type: ignore[misc]
    other = Hit(case=all_cases[1], score=0.7, rank=1)
    other.details["dense"] = 0.7
    assert hit.details == {}  # each hit has its own details dict


def test_default_filter_keeps_only_the_train_split(all_cases: tuple[Case, ...], all_embeddings: np.ndarray) -> None:
    flt = CaseFilter()
    assert flt.splits == ("train",) and flt.has_mask is None and flt.has_volume is None
    assert not (flt.labels_all or flt.labels_any or flt.exclude_case_ids or flt.exclude_patients)
    # an index over every split of the shipped cases (real reports, real MiniLM embeddings)
    mixed = CaseIndex.build(all_embeddings, list(all_cases), encoder_fingerprint="minilm-test", encoder_name="minilm")
    assert len({c.split for c in all_cases}) > 1  # the corpus holds other splits that the default must drop
    kept = candidate_mask(mixed, flt)
    assert kept.any() and {c.split for c, k in zip(all_cases, kept, strict=True) if k} == {"train"}
    assert candidate_mask(mixed, CaseFilter(splits=None)).all()


def test_case_filter_is_immutable_and_hashable() -> None:
    a = CaseFilter(labels_any=("Pleural effusion",), exclude_patients=frozenset({"p1"}))
    b = CaseFilter(labels_any=("Pleural effusion",), exclude_patients=frozenset({"p1"}))
    assert a == b and hash(a) == hash(b) and a != CaseFilter()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.has_mask = True  # type: ignore[misc]
