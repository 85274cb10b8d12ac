"""The structural proxy, in one trip: retrieve a training case -> take its mask -> put it on the generation grid.

RAG-Text2CT (Sec. 2.0.3) conditions the ControlNet on the anatomy of a retrieved training case. The trip:

1. ``retrieve_proxy``   the top-1 *training* case under a strategy (nearest / random / farthest) that can give a
                        proxy: its own mask, or its CT to segment (``sampler.proxy_from`` decides which first);
2. ``place_on_grid``    the mask (retrieved, or the user's) resampled with nearest neighbour onto the output grid:
                        RAS, the image space's spacing, centred on the mask's lungs (``sampler.proxy_center``);
3. then converted by structure name to the ControlNet's label set (``ctrag.data.labels.convert_labels``), so a
   TotalSegmentator proxy can drive a model trained on coarse masks. Resampling before converting keeps the work
   proportional to the output size even for a 512x512x128 TotalSegmentator mask.

Label vocabularies and their conversions live in ``ctrag.data.labels``, grids and resampling in
``ctrag.data.transforms``; this module only decides which mask, which grid and where.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrag.data.labels import check_labels, convert_labels, label_names, source_space
from ctrag.data.nifti import Volume, load_volume
from ctrag.data.transforms import PreprocessConfig, grid_affine, resample_to_grid, world_center
from ctrag.errors import InvalidInputError, LeakageError

MASK_VOCABULARIES: tuple[str, ...] = ("auto", "coarse", "totalseg")


@dataclass
class ProxyMask:
    """The structural proxy on the output grid, and where it came from."""

    labels: np.ndarray
    affine: np.ndarray
    source: str
    """"retrieval", "user" or "none"."""
    origin: str = ""
    """File (and vocabulary) the labels were read from."""


@dataclass
class RetrievedProxy:
    """A retrieved case's label volume in its own vocabulary, a body mask when its CT was at hand, and the
    record that goes into the provenance file."""

    mask: Volume
    vocabulary: str
    record: dict[str, Any]
    body: np.ndarray | None = None


def segment_ct(volume: Volume, segment_config: Any | None = None, *, check_intensity: bool = True) -> Volume:
    """Coarse anatomy labels of a CT from ``ctrag.segment.segment_volume`` (classical backend by default).

    ``check_intensity=False`` is for generated volumes, whose HU statistics need not look like a scanner's.
    """
    from ctrag.segment import SegmentConfig, segment_volume

    cfg = segment_config if segment_config is not None else SegmentConfig()
    if cfg.labels != "coarse":
        raise InvalidInputError("the generator works with coarse segmentations (segment.labels: coarse)")
    if not check_intensity:
        cfg = dataclasses.replace(cfg, check_intensity=False)
    return segment_volume(volume, cfg)


def load_retriever(index_dir: str | os.PathLike[str], encoder: Any | None, device: str) -> Any:
    """Retriever over ``index_dir``; shares ``encoder`` when the index was built with the same one."""
    from ctrag.retrieval.retriever import Retriever

    retriever = Retriever.from_dir(index_dir, device=device)
    if encoder is not None and getattr(encoder, "fingerprint", None) == retriever.index.encoder_fingerprint:
        retriever = Retriever(
            retriever.index, encoder, retriever.scorer, config=retriever.config, scorer_name=retriever.scorer_name
        )
    return retriever


def mask_vocabulary(volume: Volume, mask_labels: str) -> str:
    """The vocabulary a mask is read in: the one named, or for ``auto`` the one its ids imply."""
    if mask_labels != "auto":
        return mask_labels
    return source_space(None, [int(v) for v in np.unique(np.asarray(volume.array)) if v == v])


def load_user_mask(mask: str | os.PathLike[str] | Volume, mask_labels: str) -> Volume:
    """A user's proxy mask, refused unless it is a 3-D integer label map of its vocabulary."""
    if mask_labels not in MASK_VOCABULARIES:
        raise InvalidInputError(f"mask_labels must be 'auto', 'coarse' or 'totalseg', got {mask_labels!r}")
    volume = mask if isinstance(mask, Volume) else load_volume(mask)
    if np.asarray(volume.array).ndim != 3:
        raise InvalidInputError(f"mask {volume.path or ''} must be 3-D, got shape {volume.array.shape}")
    check_labels(volume.array, mask_vocabulary(volume, mask_labels), name=volume.path or "mask")
    return volume


def retrieve_proxy(
    retriever: Any,
    report: str,
    strategy: str,
    seed: int,
    *,
    proxy_from: str,
    label_set: str,
) -> RetrievedProxy:
    """Top-1 training case that can give a proxy (a mask, or a CT to segment) under ``strategy``."""
    from ctrag.retrieval.types import CaseFilter

    if retriever is None:
        raise InvalidInputError("this pipeline has no retriever; pass index_dir= or retriever=")
    usable = (lambda c: c.has_mask) if proxy_from == "case" else (lambda c: c.has_mask or c.has_volume)
    excluded = frozenset(c.case_id for c in retriever.index.cases if not usable(c))
    hits = retriever.search(
        report, k=1, strategy=strategy, filters=CaseFilter(splits=("train",), exclude_case_ids=excluded), seed=seed
    )
    if not hits:
        raise InvalidInputError("retrieval found no training case with a mask or a CT in the index")
    hit = hits[0]
    case = hit.case
    if case.split != "train":
        raise LeakageError(f"retrieved case {case.case_id} is from split {case.split!r}; proxies come from train only")
    ct = load_volume(case.volume_path) if case.volume_path is not None else None
    use_mask = case.mask_path is not None and (proxy_from != "segment-or-case" or ct is None)
    body = None
    if use_mask:
        assert case.mask_path is not None
        mask = load_volume(case.mask_path)
        vocabulary = source_space(case.mask_source, [int(v) for v in np.unique(mask.array)])
        origin = f"case mask ({case.mask_source})"
        if vocabulary != label_set and ct is not None:
            body = segment_ct(ct).array > 0
    else:
        assert ct is not None
        mask = segment_ct(ct)
        vocabulary, origin = "coarse", "ctrag.segment (classical) of the retrieved CT"
    record = {
        "case_id": case.case_id,
        "score": float(hit.score),
        "rank": int(hit.rank),
        "strategy": strategy,
        "proxy": origin,
        "report_source": case.report_source,
    }
    if case.pairing is not None:  # the retrieved case's text was borrowed from another study: say so in provenance
        record["pairing"] = dict(case.pairing)
    return RetrievedProxy(mask=mask, vocabulary=vocabulary, record=record, body=body)


def proxy_center(labels: np.ndarray, affine: np.ndarray, vocabulary: str, mode: str) -> np.ndarray:
    """World position of the centre of the lungs' (``mode="lungs"``), all labels' (``"foreground"``) or the
    volume's bounding box, where the output grid is centred."""
    sel: np.ndarray | None = None
    if mode == "lungs":
        lung_ids = [k for k, v in label_names(vocabulary).items() if v.startswith("lung")]
        sel = np.isin(labels, lung_ids)
        if not sel.any():
            sel = labels > 0
    elif mode == "foreground":
        sel = labels > 0
    if sel is None or not sel.any():
        return world_center(labels.shape, affine)
    center_vox = np.zeros(3)
    for axis in range(3):
        present = np.flatnonzero(sel.any(axis=tuple(a for a in range(3) if a != axis)))
        center_vox[axis] = (present[0] + present[-1]) / 2.0
    return np.asarray(affine[:3, :3] @ center_vox + affine[:3, 3])


def default_grid(shape: tuple[int, ...], space: PreprocessConfig) -> np.ndarray:
    """Grid centred on the world origin when there is no proxy to place the volume on."""
    return grid_affine(np.zeros(3), shape, space.spacing, space.orientation)


def place_on_grid(
    mask: Volume,
    vocabulary: str,
    shape: tuple[int, ...],
    space: PreprocessConfig,
    label_set: str,
    *,
    center: str = "lungs",
    source: str,
    body: np.ndarray | None = None,
) -> ProxyMask:
    """Resample a mask (nearest neighbour) onto the output grid, then convert it to the ControlNet label set."""
    vocab = mask_vocabulary(mask, vocabulary)
    name = mask.path or "mask"
    middle = proxy_center(np.asarray(mask.array), mask.affine, vocab, center)
    affine = grid_affine(middle, shape, space.spacing, space.orientation)
    on_grid = np.asarray(resample_to_grid(mask, shape, affine, mode="nearest", fill=0).array)
    body_grid = None
    if body is not None:
        body_volume = Volume(array=body.astype(np.uint8), affine=mask.affine)
        body_grid = np.asarray(resample_to_grid(body_volume, shape, affine, mode="nearest", fill=0).array) > 0
    labels = convert_labels(on_grid, vocab, label_set, body=body_grid, name=name)
    return ProxyMask(labels=labels, affine=affine, source=source, origin=f"{mask.path or 'array'} ({vocab})")
