"""Retrieval-only reports on real CT-RATE reports (session train index of tests/testsupport) and shipped CTs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testsupport import index_data as support

from ctrag.data.case import Case
from ctrag.data.nifti import load_volume
from ctrag.errors import ConfigError, InvalidInputError, LeakageError
from ctrag.index import CaseIndex
from ctrag.reporting.retrieval_reporter import (
    RetrievalReportConfig,
    RetrievalReporter,
    candidates_of,
    load_query_volume,
    select_sentences,
)
from ctrag.reporting.sentences import REGIONS
from ctrag.retrieval.retriever import Retriever

SAMPLE_CT = Path(__file__).resolve().parents[2] / "sample_data" / "ct"


@pytest.fixture(scope="module")
def reporter(train_index: CaseIndex, test_encoder: Any) -> RetrievalReporter:
    return RetrievalReporter(Retriever(train_index, test_encoder))


@pytest.fixture(scope="module")
def val_cases(all_cases: tuple[Case, ...]) -> list[Case]:
    return [c for c in all_cases if c.split == "val"]


def _random_candidates(n: int, cases: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=(n, 16)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    return rng.uniform(0, 1, n), vec, [f"c{int(i)}" for i in rng.integers(0, cases, n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mmr_keeps_one_sentence_per_source_case(seed: int) -> None:
    rel, vec, ids = _random_candidates(40, 6, seed)
    picked = select_sentences(rel, vec, ids, 5, mmr_lambda=0.7, one_per_case=True)
    assert len(picked) == 5 and len({ids[i] for i in picked}) == 5
    free = select_sentences(rel, vec, ids, 12, mmr_lambda=1.0, one_per_case=False)
    assert len({ids[i] for i in free}) < 12  # without the constraint, 12 picks over 6 cases must repeat a case


def test_mmr_lambda_one_is_relevance_order() -> None:
    rel, vec, ids = _random_candidates(30, 30, 3)
    picked = select_sentences(rel, vec, ids, 10, mmr_lambda=1.0, one_per_case=False)
    assert picked.tolist() == np.argsort(-rel, kind="stable")[:10].tolist()
    # with the case constraint, lambda 1 is "best sentence of each not yet used case", in relevance order
    rel2, vec2, ids2 = _random_candidates(30, 4, 4)
    got = select_sentences(rel2, vec2, ids2, 4, mmr_lambda=1.0, one_per_case=True)
    best = {}
    for i in np.argsort(-rel2, kind="stable"):
        best.setdefault(ids2[i], int(i))
    assert got.tolist() == list(best.values())
    # lower lambda trades relevance for diversity: a near-duplicate of the best is not second
    dup = np.vstack([vec[:1], vec[:1] * 0.999 + 0.001 * vec[1:2], vec[2:5]])
    dup /= np.linalg.norm(dup, axis=1, keepdims=True)
    rel3 = np.asarray([1.0, 0.99, 0.6, 0.5, 0.4])
    assert select_sentences(rel3, dup, list("abcde"), 2, mmr_lambda=1.0)[1] == 1
    assert select_sentences(rel3, dup, list("abcde"), 2, mmr_lambda=0.5)[1] != 1


def test_composed_report_sentences_carry_train_sources(
    reporter: RetrievalReporter, val_cases: list[Case], train_index: CaseIndex
) -> None:
    query = val_cases[0]
    rep = reporter.report_for_case(query)
    assert rep.findings and rep.impression and rep.mode == "compose"
    train_ids = {c.case_id for c in train_index.cases if c.split == "train"}
    source_ids = set(rep.source_case_ids)
    assert len(rep.sources) == reporter.config.source_cases
    for s in rep.sentences:
        assert s.case_id in train_ids and s.case_id in source_ids and s.split == "train"
        assert s.text in rep.findings or s.text in rep.impression
    by_region: dict[str, list[str]] = {}
    for s in rep.sentences:
        if s.section == "findings":
            assert s.region in REGIONS
            by_region.setdefault(s.region, []).append(s.case_id)
    assert by_region and all(len(v) == len(set(v)) <= 3 for v in by_region.values())
    texts = [s.text for s in rep.sentences]
    assert len(texts) == len(set(texts))
    # each findings sentence really names its region in the source report (the tagger's view of it)
    cands = {(c.case_id, c.text): c for c in candidates_of(rep.sources)}
    assert all(s.region in cands[(s.case_id, s.text)].regions for s in rep.sentences if s.region)
    # deterministic
    again = reporter.report_for_case(query)
    assert again.to_dict() == rep.to_dict()


def test_nearest_mode_is_the_nearest_train_report(
    reporter: RetrievalReporter, val_cases: list[Case], train_index: CaseIndex, test_encoder: Any
) -> None:
    query = val_cases[1]
    rep = reporter.report_for_case(query, mode="nearest")
    hit = Retriever(train_index, test_encoder).search(query.report_text, k=1)[0]
    assert rep.source_case_ids == [hit.case_id]
    assert rep.findings == hit.case.report_findings.strip()
    assert {s.case_id for s in rep.sentences} == {hit.case_id}


def test_query_case_and_patient_are_never_sources(
    reporter: RetrievalReporter, train_index: CaseIndex, all_cases: tuple[Case, ...]
) -> None:
    # a train case as query: it (and the other scan of its patient, train_175/train_742 share one) is excluded
    by_patient: dict[str, list[Case]] = {}
    for c in train_index.cases:
        by_patient.setdefault(c.patient_id, []).append(c)
    query = next(v[0] for v in by_patient.values() if len(v) > 1)
    for mode in ("nearest", "compose"):
        rep = reporter.report_for_case(query, mode=mode)  # type: ignore[arg-type]
        assert query.patient_id not in {h.case.patient_id for h in rep.sources}
        assert query.patient_id not in {s.patient_id for s in rep.sentences}
    # the evaluation entry point refuses val queries whose patient is in the index (real overlap: val_80, val_154)
    overlap = [c for c in all_cases if c.case_id in support.VAL_OVERLAP_ROWS]
    with pytest.raises(LeakageError, match="patient"):
        reporter.report_for_cases(overlap)


def test_non_train_index_rows_are_never_sources(all_cases: tuple[Case, ...], test_encoder: Any) -> None:
    emb = support.embeddings()
    index = CaseIndex.build(emb, list(all_cases), encoder_fingerprint=test_encoder.fingerprint, encoder_name="t")
    rep = RetrievalReporter(Retriever(index, test_encoder)).report_for_text(all_cases[-1].report_text)
    assert {h.case.split for h in rep.sources} == {"train"}
    assert all(s.split == "train" for s in rep.sentences)


def test_volume_without_shared_space_says_so(reporter: RetrievalReporter) -> None:
    ct, mask = load_query_volume(
        SAMPLE_CT / "ts_example_ct_3mm.nii.gz", SAMPLE_CT / "ts_example_ct_3mm_seg_total_fast.nii.gz"
    )
    rep = reporter.report_for_volume(ct, mask)
    assert rep.query.kind == "volume" and rep.query.mode == "mask-caption"
    assert rep.query.image_conditioned is False
    assert any("NOT conditioned" in n for n in rep.query.notes)
    assert "liver" in (rep.query.text or "").lower()  # the caption of the real TotalSegmentator mask
    assert rep.sentences and all(s.split == "train" for s in rep.sentences)


def test_volume_with_shared_space_encoder(train_index: CaseIndex, test_encoder: Any) -> None:
    """An index built with a shared-space encoder embeds the CT itself (an untrained tower here: the path, not
    the quality, is what this checks)."""
    import torch

    from ctrag.data.transforms import PreprocessConfig
    from ctrag.encoders.clip import SharedSpaceEncoder
    from ctrag.encoders.volume import VolumeTower, VolumeTowerConfig

    torch.manual_seed(0)
    cfg = VolumeTowerConfig(channels=(8, 16), strides=(2, 2), num_groups=4, head_hidden=32, embed_dim=384)
    shared = SharedSpaceEncoder(
        test_encoder, VolumeTower(cfg), PreprocessConfig(spacing=(6.0, 6.0, 6.0), size=(32, 32, 16))
    )
    cases, emb = support.train_part()
    index = CaseIndex.build(emb, cases, encoder_fingerprint=shared.fingerprint, encoder_name=shared.name)
    rep = RetrievalReporter(Retriever(index, shared)).report_for_volume(
        load_volume(SAMPLE_CT / "lowres" / "lung_pet_ct_dx_A0001_ct_128.nii.gz"), mode="nearest"
    )
    assert rep.query.mode == "shared-space-volume" and rep.query.image_conditioned is True
    assert rep.query.mask_source is None and any("does not need region masks" in n for n in rep.query.notes)
    assert rep.sources[0].case.split == "train"


def test_bad_inputs(reporter: RetrievalReporter, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_query_volume(tmp_path / "none.nii.gz")
    (tmp_path / "ct.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="not a NIfTI"):
        load_query_volume(tmp_path / "ct.txt")
    with pytest.raises(InvalidInputError, match="another grid"):
        load_query_volume(
            SAMPLE_CT / "ts_example_ct_3mm.nii.gz", SAMPLE_CT / "lowres" / "ts_example_ct_sm_3mm_seg_total.nii.gz"
        )
    with pytest.raises(InvalidInputError, match="empty"):
        reporter.report_for_text("  ")
    with pytest.raises(InvalidInputError, match="mode"):
        reporter.report_for_text("Pleural effusion.", mode="best")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="per_region"):
        RetrievalReportConfig(per_region=0)
    with pytest.raises(ConfigError, match="mmr_lambda"):
        RetrievalReportConfig(mmr_lambda=1.5)
    with pytest.raises(InvalidInputError, match="does not exist"):
        RetrievalReporter.from_dir(tmp_path / "no-index")


def test_index_without_train_cases_is_refused(all_cases: tuple[Case, ...], test_encoder: Any) -> None:
    rows = [i for i, c in enumerate(all_cases) if c.split == "val"]
    index = CaseIndex.build(
        support.embeddings()[rows], [all_cases[i] for i in rows], encoder_fingerprint=test_encoder.fingerprint,
        encoder_name="t",
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="no 'train' cases"):
        RetrievalReporter(Retriever(index, test_encoder))
