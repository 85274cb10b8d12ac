"""Chunk <-> region-sentence alignment for SigVLP: which report sentences each z-chunk of a CT should match.

Why: a whole-report target tells the tower *that* a CT has a lung mass, not *where*; SigVLP (abstract 8 of
``/work/shared/papers/medical-retrieval-abstracts.txt``) pairs CT chunks with localised organ-wise observations
instead, a finer supervision. Here a sentence's regions come from the Reg2RG tagger
(:func:`ctrag.reporting.sentences.tag_report`), a chunk's regions from the case's anatomy mask: a chunk covers a
region when enough voxels of the structures filed under that region lie in its slices. A (chunk, sentence) pair
is positive when the sentence belongs to the chunk's own case and their regions overlap; every other pair in the
batch is a negative, except another case's sentence whose text equals one of the chunk's own positives (a shared
"No pleural effusion." is not evidence against anything). The loss is SigLIP's pairwise sigmoid (Zhai et al.
2023, arXiv:2303.15343): each pair is an independent binary decision, so the varying number of chunks and
sentences per case needs no softmax normalisation across the batch.

Masks: TotalSegmentator "total" masks map structure by structure (:data:`REGION_OF_GROUP`); coarse masks (the
classical segmenter: body, lungs, airway, bone) give lung, pleura, airways and bone only. A case without a stored
mask is segmented with the classical segmenter, on its own grid, before preprocessing. Mask and CT go through the
same preprocessing call, so the region table lines up slice for slice with the encoder input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctrag.data.case import Case
from ctrag.data.labels import ANATOMY_GROUPS, COARSE_LABELS, source_space, totalseg_v2_labels
from ctrag.data.transforms import PreprocessConfig, build_preprocess, case_to_item, volume_to_metatensor
from ctrag.errors import InvalidInputError
from ctrag.reporting.sentences import REGIONS  # the one list of Reg2RG's ten regions

logger = logging.getLogger(__name__)


#: Anatomy group (``ctrag.data.labels.ANATOMY_GROUPS``) -> Reg2RG regions it lies in. The pleura lines the
#: lungs, so lung voxels place a chunk in both; the aorta is mediastinum + abdomen, as the tagger files aortic
#: sentences; the other great vessels are mediastinum; muscle has no region.
REGION_OF_GROUP: dict[str, tuple[str, ...]] = {
    "lung_left": ("lung", "pleura"),
    "lung_right": ("lung", "pleura"),
    "airway": ("trachea and bronchie",),
    "heart": ("heart",),
    "aorta": ("mediastinum", "abdomen"),
    "esophagus": ("esophagus",),
    "vessels": ("mediastinum",),
    "bone": ("bone",),
    "upper_abdomen": ("abdomen",),
    "muscle": (),
    "other": (),
}

#: TotalSegmentator names whose group above would misplace them.
REGION_OF_NAME: dict[str, tuple[str, ...]] = {
    "thyroid_gland": ("thyroid",),
    "small_bowel": ("abdomen",),
    "colon": ("abdomen",),
    "inferior_vena_cava": ("abdomen",),
    "portal_vein_and_splenic_vein": ("abdomen",),
    "pulmonary_vein": ("heart", "mediastinum"),
    "iliac_artery_left": ("abdomen",),
    "iliac_artery_right": ("abdomen",),
    "iliac_vena_left": ("abdomen",),
    "iliac_vena_right": ("abdomen",),
}


@cache
def _region_lookup(space: str) -> np.ndarray:
    """(max_label + 1, R) bool: which regions each label id of ``space`` belongs to."""
    index = {r: i for i, r in enumerate(REGIONS)}
    if space == "coarse":
        table = np.zeros((max(COARSE_LABELS) + 1, len(REGIONS)), dtype=bool)
        for code, name in COARSE_LABELS.items():
            for region in REGION_OF_GROUP.get(name, ()):
                table[code, index[region]] = True
        return table
    if space != "totalseg":
        raise InvalidInputError(f"chunk alignment: unknown mask label space {space!r} (coarse or totalseg)")
    names = totalseg_v2_labels()
    table = np.zeros((max(names) + 1, len(REGIONS)), dtype=bool)
    for group, ids in ANATOMY_GROUPS.items():
        for label in ids:
            for region in REGION_OF_NAME.get(names[label], REGION_OF_GROUP[group]):
                table[label, index[region]] = True
    return table


def region_slices(label_map: np.ndarray, space: str, min_voxels: int = 8) -> np.ndarray:
    """(R, K) bool: region r is present in K-slice k (at least ``min_voxels`` voxels of its structures)."""
    arr = np.asarray(label_map)
    if arr.ndim != 3:
        raise InvalidInputError(f"region_slices: expected a 3-D label map, got shape {arr.shape}")
    lookup = _region_lookup(space)
    ids = np.clip(arr.astype(np.int64), 0, lookup.shape[0] - 1)
    counts = np.zeros((len(REGIONS), arr.shape[2]), dtype=np.int64)
    for k in range(arr.shape[2]):
        labels, n = np.unique(ids[:, :, k], return_counts=True)
        counts[:, k] = (lookup[labels].T * n).sum(axis=1)
    return counts >= min_voxels


def chunk_regions(slices: torch.Tensor, slice_mask: torch.Tensor, chunk_slices: int) -> torch.Tensor:
    """(n, C, R) bool chunk coverage from per-slice regions ``(n, R, K)`` padded like the tower pads its input."""
    n, r, k = slices.shape
    if slice_mask.shape[1] < k or slice_mask.shape[1] % chunk_slices:
        raise InvalidInputError(f"chunk_regions: slice_mask {tuple(slice_mask.shape)} does not fit {k} slices")
    padded = F.pad(slices.bool(), (0, slice_mask.shape[1] - k), value=False) & slice_mask[:, None, :]
    return padded.view(n, r, -1, chunk_slices).any(dim=3).transpose(1, 2)


@dataclass
class RegionSentences:
    """A case's region-tagged report sentences (only those with at least one region)."""

    texts: list[str]
    regions: np.ndarray  # (S, R) bool


def case_region_sentences(case: Case) -> RegionSentences:
    """Tag the case's report with Reg2RG regions; sentences without a region are dropped."""
    from ctrag.reporting.sentences import tag_report

    texts, rows = [], []
    for sent in tag_report(case.report_findings, case.report_impression):
        if sent.regions:
            texts.append(sent.text)
            rows.append([r in sent.regions for r in REGIONS])
    return RegionSentences(texts, np.asarray(rows, dtype=bool).reshape(len(texts), len(REGIONS)))


def load_case_region_slices(
    case: Case, preprocess: PreprocessConfig, *, min_voxels: int = 8, expected_depth: int | None = None
) -> tuple[np.ndarray, str]:
    """(R, K) region table of a case on the encoder grid, and where the mask came from.

    With a stored mask, CT and mask are preprocessed together (same resampling, the mask nearest-neighbour);
    without one, the classical segmenter labels the CT on its own grid first.
    """
    if case.volume_path is None:
        raise InvalidInputError(f"case {case.case_id}: chunk alignment needs a CT")
    if case.mask_path:
        item = case_to_item(case)
        out = build_preprocess(preprocess, mask_keys=["mask"], load=True)(item)
        mask = np.asarray(torch.as_tensor(out["mask"])[0].cpu().numpy())
        space = source_space(case.mask_source, [int(v) for v in np.unique(mask)])
        source = f"stored mask ({space})"
    else:
        from ctrag.data.nifti import load_volume
        from ctrag.segment.classical import classical_segment

        volume = load_volume(case.volume_path)
        labels = classical_segment(volume)
        items: dict[str, Any] = {"image": volume_to_metatensor(volume), "mask": volume_to_metatensor(labels)}
        out = build_preprocess(preprocess, mask_keys=["mask"], load=False)(items)
        mask = np.asarray(torch.as_tensor(out["mask"])[0].cpu().numpy())
        space, source = "coarse", "classical segmenter (coarse)"
    if expected_depth is not None and mask.shape[2] != expected_depth:
        raise InvalidInputError(
            f"case {case.case_id}: mask has {mask.shape[2]} slices on the encoder grid but the CT {expected_depth}"
        )
    return region_slices(mask, space, min_voxels), source


def chunk_sentence_targets(
    chunk_cov: torch.Tensor,
    chunk_case: torch.Tensor,
    sent_regions: torch.Tensor,
    sent_case: torch.Tensor,
    sent_text_ids: torch.Tensor,
) -> torch.Tensor:
    """(M, P) float labels in {+1, -1, 0}: positive, negative, ignored (see the module docstring).

    ``chunk_cov`` (M, R) bool regions of each chunk, ``chunk_case`` (M,) case index; ``sent_regions`` (P, R),
    ``sent_case`` (P,), ``sent_text_ids`` (P,) equal for identical sentence texts.
    """
    overlap = (chunk_cov.float() @ sent_regions.float().t()) > 0  # (M, P)
    own = chunk_case[:, None] == sent_case[None, :]
    positive = overlap & own
    # a sentence text that is a positive of the chunk (through its own case) is not a negative from another case
    same_text = sent_text_ids[None, :] == sent_text_ids[:, None]  # (P, P)
    pos_text = (positive.float() @ same_text.float()) > 0  # (M, P): column's text equals some positive's text
    labels = torch.where(positive, 1.0, -1.0)
    return torch.where(~positive & pos_text, torch.zeros_like(labels), labels)


def sigmoid_alignment_loss(
    chunk_emb: torch.Tensor,
    sent_emb: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
) -> torch.Tensor:
    """SigLIP pairwise loss, ``-log sigmoid(y * (t * cos + b))`` summed over non-ignored pairs / number of chunks."""
    if chunk_emb.ndim != 2 or sent_emb.ndim != 2 or labels.shape != (chunk_emb.shape[0], sent_emb.shape[0]):
        raise InvalidInputError(
            f"sigmoid_alignment_loss: chunks {tuple(chunk_emb.shape)}, sentences {tuple(sent_emb.shape)}, labels "
            f"{tuple(labels.shape)} do not fit"
        )
    if chunk_emb.shape[0] == 0 or sent_emb.shape[0] == 0:
        return chunk_emb.sum() * 0.0
    logits = logit_scale.exp() * F.normalize(chunk_emb, dim=-1) @ F.normalize(sent_emb, dim=-1).t() + logit_bias
    per_pair = -F.logsigmoid(labels * logits) * (labels != 0)
    return per_pair.sum() / chunk_emb.shape[0]


def flatten_chunks(
    chunk_emb: torch.Tensor, chunk_cov: torch.Tensor, chunk_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real chunks that cover at least one region: (M, E) embeddings, (M, R) coverage, (M,) case index.

    Chunks with no region (padding, body-only slices) take no part: nothing in the report is about them.
    """
    keep = chunk_mask & chunk_cov.any(dim=2)
    case_index = torch.arange(chunk_emb.shape[0], device=chunk_emb.device)[:, None].expand_as(keep)
    return chunk_emb[keep], chunk_cov[keep], case_index[keep]


def batch_sentences(
    per_case: Sequence[RegionSentences], sentence_emb: Sequence[torch.Tensor], text_ids: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate the batch's sentences: (P, E) embeddings, (P, R) regions, (P,) case index, (P,) text ids."""
    embs, regions, cases, ids = [], [], [], []
    for i, (sents, emb, tid) in enumerate(zip(per_case, sentence_emb, text_ids, strict=True)):
        if not sents.texts:
            continue
        embs.append(emb)
        regions.append(torch.from_numpy(sents.regions))
        cases.append(torch.full((len(sents.texts),), i, dtype=torch.long))
        ids.append(torch.tensor(list(tid), dtype=torch.long))
    if not embs:
        dim = sentence_emb[0].shape[1] if sentence_emb else 0
        empty = torch.zeros((0,), dtype=torch.long)
        return torch.zeros((0, dim)), torch.zeros((0, len(REGIONS)), dtype=torch.bool), empty, empty
    return torch.cat(embs), torch.cat(regions), torch.cat(cases), torch.cat(ids)


__all__ = [
    "REGIONS",
    "REGION_OF_GROUP",
    "REGION_OF_NAME",
    "RegionSentences",
    "batch_sentences",
    "case_region_sentences",
    "chunk_regions",
    "chunk_sentence_targets",
    "flatten_chunks",
    "load_case_region_slices",
    "region_slices",
    "sigmoid_alignment_loss",
]
