"""Region-conditioned retrieval: region-level similarity of reports (and CTs) and the two-stage rerank.

Why: a global report score is dominated by what a report says most about; a user asking for cases like this
one *in the lungs* wants the lung findings to agree. WristMIR (``/work/shared/papers/medical-retrieval-abstracts.txt``)
retrieves in two stages: (1) coarse global matching selects candidate exams, (2) a region-conditioned rerank
orders them by similarity in one predefined anatomical region. Stage two only reorders stage one's candidates,
so it can never bring in a case that the global search did not find (:func:`two_stage_rerank`).

Region text comes from the Reg2RG region tagger (:mod:`ctrag.reporting.sentences`): a report's region text is
the concatenation of its sentences tagged with that region. Three region scores, to measure which is worth it:

- ``lexical``: ROUGE-L-style LCS-F1 of the two region texts (cheap, no model);
- ``label``: expected label-Jaccard restricted to the CT-RATE labels of that region (:data:`REGION_LABELS`),
  from the scorer's calibrated label model; the region's labels only (no text);
- ``dense``: cosine of the region texts embedded with the index's text encoder.

A query or candidate with no sentence in the region has empty region text: lexical/dense give 0 against
everything for such a query (the rerank then keeps stage one's order), and two empty texts count as agreeing
(1.0), like two normal label sets.

The CT-side counterpart, :func:`region_pooled_embeddings`, pools a volume tower's feature map inside region
masks and projects each pooled vector with the tower's head, giving one shared-space vector per region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from ctrag.data.case import Case
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError
from ctrag.reporting.sentences import REGIONS, TaggedSentence, tag_report, tag_report_text
from ctrag.retrieval.compose import MixWeights, compose_scores
from ctrag.retrieval.label_agreement import EMPTY_JACCARD, expected_jaccard

if TYPE_CHECKING:
    import torch

    from ctrag.encoders.base import Encoder
    from ctrag.encoders.volume import VolumeTower

RegionMethod = Literal["lexical", "label", "dense"]
REGION_METHODS: tuple[str, ...] = ("lexical", "label", "dense")

#: CT-RATE labels whose findings the region tagger files under each region (the tagger's conventions: the aorta
#: is mediastinum + abdomen, lymph nodes mediastinum, peribronchial thickening airways, hiatal hernia
#: oesophagus). "Medical material" has no single region; thyroid, breast and bone have no CT-RATE label.
REGION_LABELS: dict[str, tuple[str, ...]] = {
    "lung": (
        "Emphysema",
        "Atelectasis",
        "Lung nodule",
        "Lung opacity",
        "Pulmonary fibrotic sequela",
        "Mosaic attenuation pattern",
        "Consolidation",
        "Bronchiectasis",
        "Interlobular septal thickening",
    ),
    "trachea and bronchie": ("Peribronchial thickening",),
    "pleura": ("Pleural effusion",),
    "mediastinum": ("Lymphadenopathy", "Arterial wall calcification"),
    "heart": ("Cardiomegaly", "Pericardial effusion", "Coronary artery wall calcification"),
    "esophagus": ("Hiatal hernia",),
    "thyroid": (),
    "breast": (),
    "bone": (),
    "abdomen": ("Arterial wall calcification",),
}


def check_region(region: str) -> str:
    """``region`` when it is one of the ten Reg2RG regions (a few short aliases accepted), else a clear error."""
    aliases = {"lungs": "lung", "airways": "trachea and bronchie", "trachea": "trachea and bronchie"}
    name = aliases.get(region.strip().lower(), region.strip().lower())
    if name not in REGIONS:
        raise InvalidInputError(f"unknown region {region!r}; known: {list(REGIONS)}")
    return name


def region_label_columns(region: str) -> np.ndarray:
    """Column indices (into the 18 CT-RATE labels) of ``region``'s labels."""
    names = REGION_LABELS[check_region(region)]
    return np.asarray([CT_RATE_LABELS.index(n) for n in names], dtype=np.int64)


def region_text(sentences: Sequence[TaggedSentence], region: str) -> str:
    """The sentences of one region, in report order, joined by spaces ('' when the report says nothing of it)."""
    return " ".join(s.text for s in sentences if region in s.regions)


def case_sentences(case: Case) -> list[TaggedSentence]:
    """Tagged sentences of a case's report (its findings and impression sections)."""
    return tag_report(case.report_findings or "", case.report_impression or "")


def query_sentences(text: str) -> list[TaggedSentence]:
    """Tagged sentences of a free-text query (CT-CLIP's joined form or plain findings + impression)."""
    return tag_report_text(text)


def lexical_region_scores(query_text: str, candidate_texts: Sequence[str]) -> np.ndarray:
    """LCS-F1 of the query's region text with each candidate's (1.0 for two empty texts, 0.0 for one)."""
    from ctrag.retrieval.lexical import tokens_alnum
    from ctrag.utils.sequences import lcs_f1_many

    vocab: dict[str, int] = {}

    def ids(text: str) -> list[int]:
        return [vocab.setdefault(t, len(vocab)) for t in tokens_alnum(text)]

    q = ids(query_text)
    docs = [ids(t) for t in candidate_texts]
    out = lcs_f1_many(q, docs) if q else np.zeros(len(docs))
    if not q:
        out = np.asarray([EMPTY_JACCARD if not d else 0.0 for d in docs], dtype=np.float64)
    return out


def label_region_scores(query_probs: np.ndarray, candidate_labels: np.ndarray, region: str) -> np.ndarray:
    """(n_queries, n_candidates) expected Jaccard over ``region``'s labels only (1.0 where both have none)."""
    cols = region_label_columns(region)
    probs = np.atleast_2d(np.asarray(query_probs, dtype=np.float64))
    cand = np.asarray(candidate_labels)
    if cols.size == 0:
        return np.full((probs.shape[0], cand.shape[0]), EMPTY_JACCARD)
    return expected_jaccard(probs[:, cols], cand[:, cols])


def dense_region_scores(
    query_vec: np.ndarray | None, candidate_vecs: np.ndarray, candidate_empty: np.ndarray
) -> np.ndarray:
    """Cosine of L2-normalised region vectors; an empty query region gives 1.0 for empty candidates, else 0."""
    if query_vec is None:
        return np.where(candidate_empty, EMPTY_JACCARD, 0.0).astype(np.float64)
    out = np.asarray(candidate_vecs, dtype=np.float64) @ np.asarray(query_vec, dtype=np.float64)
    return np.where(candidate_empty, 0.0, out)


# ------------------------------------------------------------------------------------------- two stages


def two_stage_rerank(
    global_scores: np.ndarray,
    region_scores: np.ndarray,
    *,
    stage1: int,
    k: int,
    region_weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Stage one: the ``stage1`` best positions by ``global_scores``; stage two: reorder them by
    ``(1 - region_weight) * minmax(global) + region_weight * minmax(region)`` over that shortlist.

    Returns (positions best first, up to ``k``; their stage-two scores). Ties keep stage one's order. Only
    stage-one positions are ever returned, whatever the region scores are. ``region_weight=0`` returns stage
    one's order; ``region_weight=1`` orders the shortlist by region score alone.
    """
    g = np.asarray(global_scores, dtype=np.float64)
    r = np.asarray(region_scores, dtype=np.float64)
    if g.ndim != 1 or r.shape != g.shape:
        raise InvalidInputError(f"two_stage_rerank: score shapes {g.shape} and {r.shape} must be equal and 1-D")
    if stage1 < 1 or k < 1:
        raise InvalidInputError(f"two_stage_rerank: stage1 and k must be >= 1, got {stage1}, {k}")
    if not 0.0 <= region_weight <= 1.0:
        raise InvalidInputError(f"region weight must be in [0, 1], got {region_weight}")
    order = np.lexsort((np.arange(g.size), -g))[:stage1]  # stage one, ties to the lower position
    mix = MixWeights.of({"global": 1.0 - region_weight, "region": region_weight})
    second = compose_scores({"global": g[order], "region": r[order]}, mix, normalise="minmax")
    rerank = np.lexsort((np.arange(order.size), -second))[:k]
    return order[rerank], second[rerank]


@dataclass
class RegionIndex:
    """Per-region texts (and optionally vectors) of a fixed list of candidate cases, computed once."""

    case_ids: tuple[str, ...]
    texts: dict[str, list[str]]  # region -> one text per candidate ('' when the report says nothing of it)
    labels: np.ndarray  # (n, 18) candidate labels (0 where unknown)
    vectors: dict[str, np.ndarray]  # region -> (n, d), filled by ``embed``

    @classmethod
    def build(cls, cases: Sequence[Case], regions: Sequence[str] = REGIONS) -> RegionIndex:
        tagged = [case_sentences(c) for c in cases]
        texts = {check_region(r): [region_text(t, check_region(r)) for t in tagged] for r in regions}
        labels = np.zeros((len(cases), len(CT_RATE_LABELS)), dtype=np.int8)
        for i, c in enumerate(cases):
            if c.labels is not None:
                labels[i] = c.labels
        return cls(tuple(c.case_id for c in cases), texts, labels, {})

    def __len__(self) -> int:
        return len(self.case_ids)

    def embed(self, encoder: Encoder, region: str) -> np.ndarray:
        """Region texts embedded with ``encoder`` (distinct non-empty texts once; empty ones get zero vectors)."""
        region = check_region(region)
        if region not in self.vectors:
            texts = self.texts[region]
            distinct = sorted({t for t in texts if t})
            vecs = np.zeros((len(texts), encoder.dim), dtype=np.float32)
            if distinct:
                emb = np.asarray(encoder.encode_text(distinct), dtype=np.float32)
                where = {t: i for i, t in enumerate(distinct)}
                for i, t in enumerate(texts):
                    if t:
                        vecs[i] = emb[where[t]]
            self.vectors[region] = vecs
        return self.vectors[region]

    def scores(
        self,
        query_text: str,
        region: str,
        method: RegionMethod,
        rows: np.ndarray,
        *,
        query_probs: np.ndarray | None = None,
        encoder: Encoder | None = None,
    ) -> np.ndarray:
        """Region scores of one query against candidate ``rows`` (positions in this index)."""
        region = check_region(region)
        rows = np.asarray(rows, dtype=np.int64)
        if method == "label":
            if query_probs is None:
                raise InvalidInputError("region score 'label' needs the query's label probabilities (a label model)")
            return label_region_scores(query_probs, self.labels[rows], region)[0]
        q_text = region_text(query_sentences(query_text), region)
        if method == "lexical":
            texts = self.texts[region]
            return lexical_region_scores(q_text, [texts[int(i)] for i in rows])
        if method == "dense":
            if encoder is None:
                raise InvalidInputError("region score 'dense' needs a text encoder")
            vecs = self.embed(encoder, region)[rows]
            empty = np.asarray([not self.texts[region][int(i)] for i in rows], dtype=bool)
            q_vec = np.asarray(encoder.encode_text([q_text]), dtype=np.float32)[0] if q_text else None
            return dense_region_scores(q_vec, vecs, empty)
        raise InvalidInputError(f"region score must be one of {list(REGION_METHODS)}, got {method!r}")


# ------------------------------------------------------------------------------------------ CT side


def region_pooled_embeddings(
    tower: VolumeTower, volumes: torch.Tensor, masks: torch.Tensor, *, min_voxels: int = 1
) -> torch.Tensor:
    """(n, R, embed_dim) L2-normalised region embeddings: the tower's feature map pooled inside each mask.

    ``masks``: (n, R, D, H, W) region masks on the volumes' grid (bool or [0, 1]). Each mask is resampled to the
    feature grid by area averaging (a soft mask), the features are mean- and max-pooled inside it (the two
    halves the tower's head was trained on for the whole volume), and the head projects them into the shared
    space. A region with fewer than ``min_voxels`` mask voxels gets a zero vector (absent region).
    """
    import torch
    import torch.nn.functional as F

    from ctrag.encoders.volume import check_volume_batch

    check_volume_batch(volumes, tower.cfg.in_channels)
    if masks.ndim != 5 or masks.shape[0] != volumes.shape[0] or masks.shape[2:] != volumes.shape[2:]:
        raise InvalidInputError(
            f"region masks must be shaped (n, R, {', '.join(map(str, volumes.shape[2:]))}) for volumes "
            f"{tuple(volumes.shape)}, got {tuple(masks.shape)}"
        )
    with torch.no_grad():
        feats = tower.stages(tower.stem(volumes.float()))  # (n, C, d, h, w)
        m = masks.float()
        soft = F.adaptive_avg_pool3d(m, feats.shape[2:])  # (n, R, d, h, w) share of each cell inside the mask
        weight = soft.sum(dim=(2, 3, 4)).clamp_min(1e-8)  # (n, R)
        mean = torch.einsum("ncdhw,nrdhw->nrc", feats, soft) / weight[..., None]
        inside = soft[:, :, None] > 0  # (n, R, 1, d, h, w)
        masked = torch.where(inside, feats[:, None], torch.full_like(feats[:, None], float("-inf")))
        peak = masked.amax(dim=(3, 4, 5))
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
        emb = F.normalize(tower.head(torch.cat((mean, peak), dim=-1)), dim=-1)
        present = m.sum(dim=(2, 3, 4)) >= min_voxels
        return torch.where(present[..., None], emb, torch.zeros_like(emb))


def masks_from_labels(label_map: np.ndarray, regions: Mapping[str, Sequence[int]]) -> tuple[list[str], np.ndarray]:
    """(region names, (R, D, H, W) bool masks) from an integer label volume and region -> label ids."""
    arr = np.asarray(label_map)
    names = list(regions)
    return names, np.stack([np.isin(arr, list(regions[n])) for n in names]) if names else np.zeros(
        (0, *arr.shape), bool
    )
