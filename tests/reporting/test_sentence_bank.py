"""``SentenceBank`` on real shipped CT-RATE reports with a cheap real text encoder (LSA, tests/testsupport/lsa.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from testsupport.index_data import read_ct_rate
from testsupport.lsa import LsaEncoder

from ctrag.data.case import Case
from ctrag.errors import IncompatibleIndexError, InvalidInputError
from ctrag.reporting.sentence_bank import SentenceBank


@pytest.fixture(scope="module")
def cases() -> list[Case]:
    return read_ct_rate("train", 40) + read_ct_rate("val", 10)


@pytest.fixture(scope="module")
def encoder(cases: list[Case]) -> LsaEncoder:
    return LsaEncoder([c.report_text for c in cases if c.split == "train"], dim=32)


@pytest.fixture(scope="module")
def bank(cases: list[Case], encoder: LsaEncoder) -> SentenceBank:
    return SentenceBank.build(cases, encoder)


def test_build_uses_train_only_by_default(bank: SentenceBank, cases: list[Case]) -> None:
    train_ids = {c.case_id for c in cases if c.split == "train"}
    assert bank.splits == ("train",)
    assert bank.case_ids == train_ids
    assert {s.split for s in bank.sentences} == {"train"}
    assert bank.distinct_texts < len(bank)  # templated sentences share one vector


def test_regions_are_indexed_and_searchable(bank: SentenceBank, encoder: LsaEncoder) -> None:
    counts = bank.region_counts()
    assert counts["lung"] > 0 and counts["pleura"] > 0 and counts["abdomen"] > 0
    query = encoder.encode_text(["Bilateral pleural effusion is observed."])[0]
    hits = bank.search(query, "pleura", 3)
    assert len(hits) == 3 and all("pleura" in h.sentence.regions for h in hits)
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert len({h.sentence.text for h in hits}) == 3
    abnormal = bank.search(query, "pleura", 3, abnormal=True)
    assert abnormal and all(h.sentence.abnormal for h in abnormal)
    every = bank.search(query, "pleura", 50, distinct_text=False)
    assert len(every) == 50 and len({h.sentence.text for h in every}) < 50


def test_save_load_round_trip(bank: SentenceBank, encoder: LsaEncoder, tmp_path: Path) -> None:
    bank.save(tmp_path / "bank")
    loaded = SentenceBank.load(tmp_path / "bank", encoder=encoder)
    assert loaded.sentences == bank.sentences and loaded.fingerprint == bank.fingerprint
    query = encoder.encode_text(["Thoracic aorta diameter is normal."])[0]
    before = [(h.sentence, h.score) for h in bank.search(query, "mediastinum", 5)]
    after = [(h.sentence, h.score) for h in loaded.search(query, "mediastinum", 5)]
    assert [s for s, _ in before] == [s for s, _ in after]
    np.testing.assert_allclose([x for _, x in before], [x for _, x in after], rtol=1e-6)
    bank.save(tmp_path / "bank")  # a second save replaces the version atomically
    assert len(SentenceBank.load(tmp_path / "bank")) == len(bank)


def test_fingerprint_mismatch_is_refused(bank: SentenceBank, tmp_path: Path) -> None:
    bank.save(tmp_path / "bank")
    with pytest.raises(IncompatibleIndexError, match=r"lsa-test@0.*other@1"):
        SentenceBank.load(tmp_path / "bank", expected_fingerprint="other@1")


def test_bad_queries_and_empty_banks(bank: SentenceBank, cases: list[Case], encoder: LsaEncoder) -> None:
    with pytest.raises(IncompatibleIndexError, match="dimension 5"):
        bank.search(np.ones(5, dtype=np.float32), "lung", 3)
    with pytest.raises(InvalidInputError, match="unknown region 'liver'"):
        bank.search(np.zeros(bank.dim, dtype=np.float32), "liver", 3)
    with pytest.raises(InvalidInputError, match="k must be"):
        bank.search(np.zeros(bank.dim, dtype=np.float32), "lung", 0)
    with pytest.raises(InvalidInputError, match="no report sentences in the train"):
        SentenceBank.build([c for c in cases if c.split == "val"], encoder)
    with pytest.raises(InvalidInputError, match="no report sentences"):
        SentenceBank.build([Case(case_id="x", patient_id="x", split="train")], encoder)
    with pytest.raises(InvalidInputError, match="splits must be"):
        SentenceBank.build(cases, encoder, splits=("holdout",))
    with pytest.raises(InvalidInputError, match="does not exist"):
        SentenceBank.load(Path("/nonexistent/bank"))


def test_other_splits_only_when_asked(cases: list[Case], encoder: LsaEncoder) -> None:
    both = SentenceBank.build(cases, encoder, splits=("train", "val"))
    assert {s.split for s in both.sentences} == {"train", "val"}
