"""One search that combines issue 14's methods: composed (text + CT) scores, a region-conditioned second stage,
MMR reference sets with one case per patient, and abstention (what ``ctrag search --volume/--region/--diverse/
--abstain`` runs).

Order of work, per query: (1) per-modality scores over the filtered candidates — the report text through the
retriever's scorer, a CT through its shared-space vector against the indexed report vectors — mixed by
:class:`~ctrag.retrieval.compose.MixWeights` (min-max normalised per query when more than one term is on, since
a hybrid score and a cosine are on different scales); (2) abstention on the text score's top, before anything
reorders it (the threshold is calibrated on that score); (3) with a region, stage two reorders the best
``stage1`` candidates only; (4) nearest or MMR (one case per patient) picks ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ctrag.errors import InvalidInputError
from ctrag.retrieval.compose import MixWeights, Normalise, compose_scores
from ctrag.retrieval.filters import candidate_mask
from ctrag.retrieval.regional import RegionIndex, RegionMethod, check_region, two_stage_rerank
from ctrag.retrieval.strategies import apply_strategy
from ctrag.retrieval.types import CaseFilter, Hit

if TYPE_CHECKING:
    from ctrag.retrieval.evidence import AbstentionThreshold
    from ctrag.retrieval.retriever import Retriever

TERMS: tuple[str, ...] = ("text", "volume")


@dataclass
class ComposedResult:
    """Hits plus what decided them (weights, stage sizes, abstention)."""

    hits: list[Hit]
    weights: dict[str, float]
    abstained: bool = False
    top_text_score: float | None = None
    threshold: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def composed_search(
    retriever: Retriever,
    text: str | None,
    *,
    volume_vector: np.ndarray | None = None,
    mix: MixWeights | None = None,
    k: int = 5,
    filters: CaseFilter = CaseFilter(),
    region: str | None = None,
    region_method: RegionMethod = "lexical",
    stage1: int = 20,
    region_weight: float = 0.5,
    diverse: bool = False,
    mmr_lambda: float = 0.7,
    abstention: AbstentionThreshold | None = None,
) -> ComposedResult:
    """Search with report ``text`` and/or a CT's shared-space ``volume_vector`` (see the module docstring)."""
    has_text = bool(text and text.strip())
    if mix is None:
        mix = MixWeights.of({"text": 1.0 if has_text else 0.0, "volume": 1.0 if volume_vector is not None else 0.0})
    unknown = [t for t in mix.as_dict() if t not in TERMS]
    if unknown:
        raise InvalidInputError(f"composed search: unknown score term(s) {unknown}; known: {list(TERMS)}")
    if "text" in mix.active and not has_text:
        raise InvalidInputError("composed search: the text term has weight > 0 but no report text was given")
    if "volume" in mix.active and volume_vector is None:
        raise InvalidInputError("composed search: the volume term has weight > 0 but no CT was given")
    if region is not None:
        region = check_region(region)
        if not has_text:
            raise InvalidInputError("the region rerank compares report sentences; it needs report text")
    if abstention is not None and "text" not in mix.active:
        raise InvalidInputError("abstention is calibrated on report-text scores; it needs the text term")
    if k < 1 or stage1 < 1:
        raise InvalidInputError(f"k and stage1 must be >= 1, got {k}, {stage1}")

    index = retriever.index
    rows = np.flatnonzero(candidate_mask(index, filters))
    if rows.size == 0:
        return ComposedResult([], mix.as_dict())
    terms: dict[str, np.ndarray] = {}
    q_text_vec: np.ndarray | None = None
    if "text" in mix.active:
        assert text is not None
        q_text_vec = index.check_queries(retriever.encoder.encode_text([text]))
        terms["text"] = retriever._score(q_text_vec, [text], rows)[0]  # the retriever's own scores
    if "volume" in mix.active:
        assert volume_vector is not None
        v = index.check_queries(np.asarray(volume_vector, dtype=np.float32).reshape(1, -1))
        terms["volume"] = index.exact_scores(v, rows, precise=True)[0]
    normalise: Normalise = "minmax" if len(mix.active) > 1 else "none"
    scores = compose_scores(terms, mix, normalise=normalise)
    result = ComposedResult([], mix.as_dict(), info={"normalise": normalise, "candidates": int(rows.size)})

    if abstention is not None:
        from ctrag.retrieval.evidence import top_statistic

        assert q_text_vec is not None and text is not None
        if abstention.statistic == "score":
            top = float(terms["text"].max())
        else:
            top = float(top_statistic(retriever, q_text_vec, [text], rows, abstention.statistic).max())  # type: ignore[arg-type]
        result.top_text_score, result.threshold = top, abstention.threshold
        if top < abstention.threshold:
            result.abstained = True
            return result

    if region is not None:
        assert text is not None
        stage = np.lexsort((np.arange(scores.size), -scores))[:stage1]
        reg = np.zeros(scores.size)
        # Region texts of the stage-one cases only: stage two never looks at anything else.
        regions = RegionIndex.build([index.case(int(rows[p])) for p in stage], regions=(region,))
        probs = None
        if region_method == "label":
            model = getattr(retriever.scorer, "label_model", None)
            if model is None:
                raise InvalidInputError("region score 'label' needs a scorer with a label model (the hybrid scorer)")
            probs = model.predict_proba([text])
        local = np.arange(stage.size)
        reg[stage] = regions.scores(text, region, region_method, local, query_probs=probs, encoder=retriever.encoder)
        picked, second = two_stage_rerank(scores, reg, stage1=stage1, k=stage1, region_weight=region_weight)
        final = np.full(scores.size, -np.inf)
        final[picked] = second
        scores = final  # only stage-one rows stay finite: nothing else can be picked below
        result.info.update({"region": region, "region_method": region_method, "stage1": int(stage.size),
                            "region_weight": region_weight})  # fmt: skip

    patient = index.arrays.patient[rows]
    if diverse:
        picked_pos = apply_strategy("mmr", scores, None, k, np.random.default_rng(0), groups=patient,
                                    vectors=np.asarray(index.vectors[rows]),
                                    options={"mmr_lambda": mmr_lambda, "one_per_patient": True})  # fmt: skip
        result.info.update({"mmr_lambda": mmr_lambda, "one_per_patient": True})
    else:
        picked_pos = apply_strategy("nearest", scores, None, k, np.random.default_rng(0))
    strategy = "mmr" if diverse else "nearest"
    dense = (np.asarray(index.vectors[rows[picked_pos]]) @ q_text_vec[0]) if q_text_vec is not None else None
    for rank, pos in enumerate(picked_pos):
        details: dict[str, Any] = {
            "row": int(rows[pos]),
            "scorer": retriever.scorer_name,
            "terms": {t: float(v[pos]) for t, v in terms.items()},
        }
        if dense is not None:
            details["dense_score"] = float(dense[rank])
        result.hits.append(Hit(index.case(int(rows[pos])), float(scores[pos]), rank, strategy, details))
    return result
