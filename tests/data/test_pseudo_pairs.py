"""Pseudo pairs on real data: shipped CTs with real TotalSegmentator masks and real CT-RATE train/val reports."""

from __future__ import annotations

import numpy as np
import pytest
from testsupport.index_data import MiniLMTestEncoder, ct_cases_with_masks, read_ct_rate

from ctrag.data.case import Corpus
from ctrag.data.pseudo_pairs import (
    PseudoPairConfig,
    assign_pairs,
    label_jaccard,
    pair_cases,
    paired_corpus_cases,
)
from ctrag.errors import ConfigError, InvalidInputError, LeakageError


@pytest.fixture(scope="module")
def encoder() -> MiniLMTestEncoder:
    return MiniLMTestEncoder()


@pytest.fixture(scope="module")
def reports() -> list:
    return read_ct_rate("train", 120)


def test_mutual_pairs_are_mutual_and_top1_is_superset(rng: np.random.Generator) -> None:
    sim = rng.uniform(-1, 1, size=(12, 30))
    cts, reps = [f"c{i}" for i in range(12)], [f"r{j}" for j in range(30)]
    mutual = assign_pairs(sim, cts, reps, "mutual")
    top1 = assign_pairs(sim, cts, reps, "top1")
    assert len(top1) == 12 and all(p.rank == 1 for p in top1)
    for p in mutual:
        i, j = cts.index(p.ct_case_id), reps.index(p.report_case_id)
        assert sim[i].argmax() == j and sim[:, j].argmax() == i
    assert {(p.ct_case_id, p.report_case_id) for p in mutual} <= {(p.ct_case_id, p.report_case_id) for p in top1}
    sim[:, 0] = 2.0  # one report best for every CT: top1 reuses it, mutual keeps one, greedy stays one-to-one
    assert len({p.report_case_id for p in assign_pairs(sim, cts, reps, "top1")}) == 1
    assert len(assign_pairs(sim, cts, reps, "mutual")) == 1
    greedy = assign_pairs(sim, cts, reps, "greedy")
    assert len({p.report_case_id for p in greedy}) == 12 and max(p.rank for p in greedy) > 1


def test_threshold_drops_low_scores(rng: np.random.Generator) -> None:
    sim = rng.uniform(-1, 1, size=(20, 40))
    ids, rids = [f"c{i}" for i in range(20)], [f"r{j}" for j in range(40)]
    every = assign_pairs(sim, ids, rids, "top1")
    thr = float(np.median([p.score for p in every]))
    kept = assign_pairs(sim, ids, rids, "top1", threshold=thr)
    assert kept and len(kept) < len(every) and all(p.score >= thr for p in kept)
    with pytest.raises(ConfigError):
        PseudoPairConfig(method="best")
    with pytest.raises(InvalidInputError):
        assign_pairs(sim, ids[:3], rids, "top1")


def test_never_pairs_evaluation_cases(encoder: MiniLMTestEncoder, reports: list) -> None:
    cts = ct_cases_with_masks()
    val = read_ct_rate("val", 3)
    with pytest.raises(LeakageError):
        pair_cases(cts, reports + val, encode_text=encoder.encode_text)
    with pytest.raises(LeakageError):
        pair_cases([cts[0].evolve(split="test")], reports, encode_text=encoder.encode_text)


def test_pseudo_pairs_marked_in_manifest_and_survive_load(encoder, reports, tmp_path) -> None:
    cts = ct_cases_with_masks()
    res = pair_cases(cts, reports, encode_text=encoder.encode_text, config=PseudoPairConfig("top1"))
    assert {p.ct_case_id for p in res.pairs} == {c.case_id for c in cts}
    assert {p.report_case_id for p in res.pairs} <= {c.case_id for c in reports}
    out = Corpus(paired_corpus_cases(cts, reports, res)).save(tmp_path / "paired")
    text = out.read_text()
    assert text.count('"pairing": {"kind": "pseudo"') == len(res.pairs)
    loaded = Corpus.load(out)
    by_report = {c.case_id: c for c in reports}
    for pair in res.pairs:
        case = loaded.get(pair.ct_case_id)
        assert case.is_pseudo_pair and case.report_source == "pseudo-paired"
        assert case.pairing is not None and case.pairing["report_case_id"] == pair.report_case_id
        assert case.report_text == by_report[pair.report_case_id].report_text
        assert case.labels == by_report[pair.report_case_id].labels
        assert case.mask_path is not None and case.split == "train"
    with pytest.raises(InvalidInputError):  # a pseudo source without its record (or vice versa) is refused
        loaded[0].evolve(pairing=None)


def test_real_report_pairing_beats_random_on_labels(encoder, reports) -> None:
    """Val findings paired with train reports agree with their gold labels more than random train reports do."""
    val = [c for c in read_ct_rate("val", 40) if c.report_findings]
    q = encoder.encode_text([c.report_findings for c in val])
    sim = q @ encoder.encode_text([c.report_text for c in reports]).T
    pairs = assign_pairs(sim, [c.case_id for c in val], [c.case_id for c in reports], "top1")
    vy = {c.case_id: c.labels for c in val}
    ry = {c.case_id: c.labels for c in reports}
    paired = label_jaccard(np.array([vy[p.ct_case_id] for p in pairs]), np.array([ry[p.report_case_id] for p in pairs]))
    all_r = np.array([c.labels for c in reports])
    rand = np.mean([label_jaccard(np.repeat(np.array([vy[p.ct_case_id]]), len(all_r), 0), all_r).mean() for p in pairs])
    assert paired.mean() > rand + 0.1


def test_label_jaccard_edge_cases() -> None:
    assert label_jaccard(np.zeros(18), np.zeros(18))[0] == 1.0
    a, b = np.zeros(18), np.zeros(18)
    a[[0, 1]], b[[1, 2]] = 1, 1
    assert label_jaccard(a, b)[0] == pytest.approx(1 / 3)
