"""Reference sets on real CT-RATE reports: MMR with lambda 1 equals nearest, one case per patient, abstention
calibrated leave-one-patient-out on the indexed train reports (abstains on unrelated text and random vectors,
not on real val reports)."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.errors import InvalidInputError
from ctrag.retrieval.evidence import calibrate_abstention, leave_one_patient_out_top_scores, select_references
from ctrag.retrieval.hybrid import HybridConfig, HybridScorer, HybridWeights, LcsTable
from ctrag.retrieval.lexical import BM25Config, BM25Scorer
from ctrag.retrieval.retriever import Retriever
from ctrag.retrieval.types import CaseFilter
from tests.labels.conftest import extractor  # noqa: F401  the fitted label extractor (session)

RECIPE = "Preheat the oven to 180 degrees. Whisk two eggs with sugar, fold in the flour and bake for 25 minutes."


@pytest.fixture(scope="module")
def hybrid_retriever(train_index, test_encoder, extractor) -> Retriever:  # type: ignore[no-untyped-def]  # noqa: F811
    """The shipped default recipe (label 1 + LCS 2, sentence label extractor) over the session train index."""
    cases = train_index.cases
    texts = [c.report_text for c in cases]
    cfg = HybridConfig(search_weights=False)
    scorer = HybridScorer(
        config=cfg,
        weights=HybridWeights(),
        label_model=extractor,
        bm25=BM25Scorer.fit(texts, BM25Config()),
        embeddings=np.asarray(train_index.vectors),
        cand_labels=np.asarray([c.labels or (0,) * 18 for c in cases], dtype=np.int8),
        labels_known=np.asarray([c.labels is not None for c in cases]),
        lcs_table=LcsTable.build(texts, cfg.max_lcs_tokens),
        case_ids=[c.case_id for c in cases],
    )
    return Retriever(train_index, test_encoder, scorer, scorer_name="hybrid")


def test_mmr_with_lambda_one_equals_nearest(hybrid_retriever: Retriever, all_cases) -> None:  # type: ignore[no-untyped-def]
    for query in [c for c in all_cases if c.split == "val"][:4]:
        near = hybrid_retriever.search(query.report_text, k=8)
        plain = hybrid_retriever.search(query.report_text, k=8, strategy="mmr", mmr_lambda=1.0, one_per_patient=False)
        assert [h.case_id for h in plain] == [h.case_id for h in near]
        # With provenance on, it is nearest with later cases of an already-seen patient skipped.
        refs = select_references(hybrid_retriever, query.report_text, k=5, mmr_lambda=1.0).hits
        wide = hybrid_retriever.search(query.report_text, k=40)
        seen: set[str] = set()
        expected = []
        for h in wide:
            if h.case.patient_id not in seen:
                seen.add(h.case.patient_id)
                expected.append(h.case_id)
        assert [h.case_id for h in refs] == expected[:5]


def test_reference_sets_hold_one_case_per_patient(hybrid_retriever: Retriever, train_index) -> None:  # type: ignore[no-untyped-def]
    # Real duplicate patients: a query that is one of their reports would otherwise retrieve both scans.
    patients = [c.patient_id for c in train_index.cases]
    dup = next(c for c in train_index.cases if patients.count(c.patient_id) > 1 and c.has_report)
    for lam in (1.0, 0.5):
        refs = select_references(hybrid_retriever, dup.report_text, k=10, mmr_lambda=lam).hits
        assert len({h.case.patient_id for h in refs}) == len(refs) == 10
    near = hybrid_retriever.search(dup.report_text, k=10)
    assert len({h.case.patient_id for h in near}) < len(near)  # what nearest alone would have returned


def test_abstention_threshold_is_calibrated_leave_one_patient_out(hybrid_retriever: Retriever) -> None:
    tops = leave_one_patient_out_top_scores(hybrid_retriever)
    n_train = sum(c.split == "train" for c in hybrid_retriever.index.cases)
    assert tops.shape == (n_train,) and np.all(np.isfinite(tops))
    thr = calibrate_abstention(hybrid_retriever, 0.05)
    assert thr.threshold == pytest.approx(float(np.quantile(tops, 0.05)))
    assert thr.top_score_quantiles["q00"] <= thr.threshold <= thr.top_score_quantiles["q50"]
    with pytest.raises(InvalidInputError, match="quantile"):
        calibrate_abstention(hybrid_retriever, 1.5)


def test_abstains_far_from_every_case_but_not_on_real_reports(  # type: ignore[no-untyped-def]
    hybrid_retriever: Retriever, all_cases, rng: np.random.Generator
) -> None:
    thr = calibrate_abstention(hybrid_retriever, 0.05)
    recipe = select_references(hybrid_retriever, RECIPE, k=5, abstention=thr)
    assert recipe.abstained and recipe.hits == [] and recipe.top_score is not None and recipe.top_score < thr.threshold
    vec = rng.standard_normal(hybrid_retriever.index.dim).astype(np.float32)
    random_vec = select_references(hybrid_retriever, "", k=5, abstention=thr, query_vector=vec / np.linalg.norm(vec))
    assert random_vec.abstained
    for query in [c for c in all_cases if c.split == "val"]:
        refs = select_references(hybrid_retriever, query.report_text, k=5, abstention=thr)
        assert not refs.abstained and len(refs.hits) == 5, (query.case_id, refs.top_score, thr.threshold)


def test_dense_retriever_abstains_too(train_index, test_encoder, all_cases) -> None:  # type: ignore[no-untyped-def]
    retriever = Retriever(train_index, test_encoder)
    thr = calibrate_abstention(retriever, 0.05, CaseFilter())
    assert thr.scorer == "dense"
    assert select_references(retriever, RECIPE, abstention=thr).abstained
    val = next(c for c in all_cases if c.split == "val")
    assert not select_references(retriever, val.report_text, abstention=thr).abstained
