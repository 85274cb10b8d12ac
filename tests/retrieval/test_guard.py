"""Leakage guard on real data: the shipped CT-RATE validation split shares two patients with train."""

from __future__ import annotations

import pytest

from ctrag.data.case import Case
from ctrag.errors import LeakageError
from ctrag.index import CaseIndex
from ctrag.retrieval.guard import assert_no_leakage, find_leakage
from ctrag.retrieval.retriever import Retriever


def _val(all_cases: tuple[Case, ...]) -> list[Case]:
    return [c for c in all_cases if c.split == "val"]


def test_clean_validation_queries_pass(train_index: CaseIndex, all_cases: tuple[Case, ...]) -> None:
    clean = [c for c in _val(all_cases) if c.case_id not in ("val_80", "val_154")]
    assert find_leakage(train_index, clean, eval_split="val") == []
    assert_no_leakage(train_index, clean, eval_split="val")


def test_shared_patient_is_refused(train_index: CaseIndex, all_cases: tuple[Case, ...]) -> None:
    # val_80 / val_154 are reports of patients train_17126 / train_6840, who also have train_471, train_604 / train_593.
    with pytest.raises(LeakageError, match=r"2 query patient\(s\) have cases in the index: train_17126, train_6840"):
        assert_no_leakage(train_index, _val(all_cases), eval_split="val")


def test_query_case_in_index_is_refused(train_index: CaseIndex, all_cases: tuple[Case, ...]) -> None:
    # Evaluating on training cases themselves: ids, patients and split all leak.
    reasons = find_leakage(train_index, list(all_cases[:3]))
    assert any("3 query case(s) are in the index" in r for r in reasons)
    assert any("evaluated split(s): train" in r for r in reasons)
    with pytest.raises(LeakageError, match="refusing to evaluate"):
        assert_no_leakage(train_index, list(all_cases[:3]))


def test_index_holding_the_evaluated_split_is_refused(all_cases, all_embeddings, test_encoder) -> None:  # type: ignore[no-untyped-def]
    mixed = CaseIndex.build(
        all_embeddings, list(all_cases), encoder_fingerprint=test_encoder.fingerprint, encoder_name=test_encoder.name
    )
    with pytest.raises(LeakageError, match=r"contains the evaluated split\(s\): val \(8 cases\)"):
        assert_no_leakage(mixed, eval_split="val")  # even with no query cases given
    with pytest.raises(LeakageError, match="val"):
        assert_no_leakage(mixed, [Case(case_id="new", patient_id="new", split="val", report_findings="x")])


def test_retriever_evaluation_entry_point_runs_the_guard(
    train_index: CaseIndex, all_cases: tuple[Case, ...], test_encoder
) -> None:  # type: ignore[no-untyped-def]
    retriever = Retriever(train_index, test_encoder)
    with pytest.raises(LeakageError):
        retriever.search_cases(_val(all_cases), k=1, eval_split="val")
    clean = [c for c in _val(all_cases) if c.case_id not in ("val_80", "val_154")][:2]
    hits = retriever.search_cases(clean, k=2, eval_split="val")
    assert len(hits) == 2 and all(len(h) == 2 for h in hits)
    assert all(h.case.split == "train" for per_query in hits for h in per_query)
