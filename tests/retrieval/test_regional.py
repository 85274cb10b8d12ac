"""Region-conditioned retrieval on real CT-RATE reports: region texts, region scores, the two-stage rerank,
and region embeddings pooled inside masks from a (tiny, randomly initialised) volume tower."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError
from ctrag.reporting.sentences import REGIONS
from ctrag.retrieval.regional import (
    REGION_LABELS,
    RegionIndex,
    case_sentences,
    check_region,
    label_region_scores,
    lexical_region_scores,
    region_pooled_embeddings,
    region_text,
    two_stage_rerank,
)


@pytest.fixture(scope="module")
def region_index(all_cases) -> RegionIndex:  # type: ignore[no-untyped-def]
    return RegionIndex.build([c for c in all_cases if c.split == "train"])


def test_region_labels_cover_known_regions_and_labels() -> None:
    assert set(REGION_LABELS) == set(REGIONS)
    assert all(name in CT_RATE_LABELS for names in REGION_LABELS.values() for name in names)
    assert check_region("Lungs") == "lung"
    with pytest.raises(InvalidInputError, match="unknown region"):
        check_region("liver lobe")


def test_region_text_holds_only_that_regions_sentences(all_cases) -> None:  # type: ignore[no-untyped-def]
    case = next(c for c in all_cases if "pleural effusion" in c.report_text.lower() and c.split == "train")
    tagged = case_sentences(case)
    pleura = region_text(tagged, "pleura")
    assert "pleural" in pleura.lower()
    assert pleura == " ".join(s.text for s in tagged if "pleura" in s.regions)
    others = [s.text for s in tagged if "pleura" not in s.regions]
    assert others and all(t not in pleura for t in others if len(t) > 20)


def test_lexical_region_score_ranks_own_region_text_first(region_index: RegionIndex, all_cases) -> None:  # type: ignore[no-untyped-def]
    train = [c for c in all_cases if c.split == "train"]
    i = next(j for j, c in enumerate(train) if region_index.texts["lung"][j] and region_index.texts["heart"][j])
    rows = np.arange(len(region_index))
    lung = region_index.scores(train[i].report_text, "lung", "lexical", rows)
    assert lung[i] == pytest.approx(1.0) and lung.max() == pytest.approx(1.0)
    assert (lung < 1.0 - 1e-9).sum() > 0  # other reports' lung text differs
    # Two empty region texts agree; a query without text in a region scores 0 against every non-empty one.
    assert lexical_region_scores("", ["", "Lungs are clear."]).tolist() == [1.0, 0.0]


def test_label_region_score_ignores_other_regions_labels() -> None:
    q = np.zeros((1, 18))
    lung_col = CT_RATE_LABELS.index("Lung nodule")
    heart_col = CT_RATE_LABELS.index("Cardiomegaly")
    q[0, lung_col] = 1.0
    same = np.zeros(18, dtype=np.int8)
    same[lung_col] = 1
    plus_heart = same.copy()
    plus_heart[heart_col] = 1
    s = label_region_scores(q, np.stack([same, plus_heart]), "lung")[0]
    assert s[0] == pytest.approx(1.0) and s[1] == pytest.approx(1.0)
    h = label_region_scores(q, np.stack([same, plus_heart]), "heart")[0]
    assert h[0] == pytest.approx(1.0) and h[1] == pytest.approx(0.0)


def test_dense_region_scores_use_the_encoder(region_index: RegionIndex, test_encoder, all_cases) -> None:  # type: ignore[no-untyped-def]
    train = [c for c in all_cases if c.split == "train"]
    rows = np.arange(len(region_index))
    i = next(j for j, t in enumerate(region_index.texts["pleura"]) if "effusion" in t.lower())
    s = region_index.scores(train[i].report_text, "pleura", "dense", rows, encoder=test_encoder)
    assert s[i] == pytest.approx(1.0, abs=1e-5) and s.max() <= 1.0 + 1e-5
    empty = [j for j, t in enumerate(region_index.texts["pleura"]) if not t]
    assert all(s[j] == 0.0 for j in empty)
    with pytest.raises(InvalidInputError, match="needs a text encoder"):
        region_index.scores(train[i].report_text, "pleura", "dense", rows)


def test_rerank_never_adds_a_case_absent_from_stage_one(rng: np.random.Generator) -> None:
    for _ in range(20):
        g = rng.standard_normal(200)
        r = rng.standard_normal(200)
        stage = set(np.argsort(-g)[:15].tolist())
        r[[i for i in range(200) if i not in stage]] = 1e9  # adversarial: outsiders have the best region scores
        picked, _ = two_stage_rerank(g, r, stage1=15, k=10, region_weight=1.0)
        assert set(picked.tolist()) <= stage and len(picked) == 10
    # Weight 0 keeps stage one's order; weight 1 orders the shortlist by region score alone.
    g, r = rng.random(50), rng.random(50)
    picked, _ = two_stage_rerank(g, r, stage1=10, k=10, region_weight=0.0)
    assert picked.tolist() == np.argsort(-g)[:10].tolist()
    picked, _ = two_stage_rerank(g, r, stage1=10, k=10, region_weight=1.0)
    shortlist = np.argsort(-g)[:10]
    assert picked.tolist() == shortlist[np.argsort(-r[shortlist])].tolist()
    with pytest.raises(InvalidInputError, match="region weight"):
        two_stage_rerank(g, r, stage1=10, k=5, region_weight=1.5)


def test_lung_rerank_reorders_real_candidates_by_lung_findings(  # type: ignore[no-untyped-def]
    region_index: RegionIndex, train_index, test_encoder, all_cases
) -> None:
    query = next(c for c in all_cases if c.split == "val" and "nodule" in c.report_text.lower())
    q = test_encoder.encode_text([query.report_text])
    g = train_index.exact_scores(q)[0]
    rows = np.arange(len(region_index))
    lung = region_index.scores(query.report_text, "lung", "lexical", rows)
    heart = region_index.scores(query.report_text, "heart", "lexical", rows)
    by_lung, _ = two_stage_rerank(g, lung, stage1=20, k=5, region_weight=1.0)
    by_heart, _ = two_stage_rerank(g, heart, stage1=20, k=5, region_weight=1.0)
    stage = np.argsort(-g)[:20]
    assert lung[by_lung[0]] == pytest.approx(lung[stage].max())  # the best lung match of the shortlist comes first
    assert lung[by_lung[0]] >= lung[stage[0]]
    assert by_lung.tolist() != by_heart.tolist()  # the region chosen changes the order


def _tiny_tower():  # type: ignore[no-untyped-def]
    import torch

    from ctrag.encoders.volume import VolumeTower, VolumeTowerConfig

    torch.manual_seed(0)
    cfg = VolumeTowerConfig(channels=(8, 16), strides=(2, 2), subunits=1, num_groups=4, head_hidden=16, embed_dim=8)
    return VolumeTower(cfg).eval()


def test_region_pooled_embeddings_of_the_whole_volume_equal_the_global_embedding() -> None:
    import torch
    import torch.nn.functional as F

    tower = _tiny_tower()
    x = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, 3, 16, 16, 16)
    masks[:, 0] = 1.0  # whole volume
    masks[:, 1, :8] = 1.0  # one half
    # region 2 left empty: an absent region
    emb = region_pooled_embeddings(tower, x, masks)
    assert emb.shape == (2, 3, 8)
    with torch.no_grad():
        whole = F.normalize(tower(x), dim=-1)
    torch.testing.assert_close(emb[:, 0], whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb[:, 1].norm(dim=-1), torch.ones(2))
    assert not torch.allclose(emb[:, 1], emb[:, 0], atol=1e-3)
    assert torch.count_nonzero(emb[:, 2]) == 0
    with pytest.raises(InvalidInputError, match="region masks must be shaped"):
        region_pooled_embeddings(tower, x, masks[:, :, :8])
