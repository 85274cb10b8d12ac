"""``evaluate_generation``: wire corpus, generator, segmenter, classifier and FID into one ablation run.

The runner (:mod:`ctrag.evaluation.ablation`) takes its components as arguments so tests can hand it small
stand-ins; this module builds the real ones from a :class:`GenerationEvalConfig`:

- the generator is ``ctrag.generation.pipeline.GenerationPipeline.from_pretrained(config.pipeline,
  index_dir=config.index)``; its retriever's index is what the leakage guard inspects;
- the segmenter is ``ctrag.segment.segment_volume`` with the preset's ``segment`` section (TotalSegmentator
  when that section asks for it and its weights exist, otherwise the classical segmenter, named in Table 3),
  returning coarse labels;
- ``evaluation.external`` names other methods' output tables (:mod:`ctrag.evaluation.external`), scored as
  extra rows; with ``evaluation.methods`` empty no generator is needed;
  generated volumes skip the HU plausibility check (a poor generator must be scored, not refused);
- the classifier is a folder from ``ctrag train classifier``; the default FID extractors (``ctnet-slice`` /
  ``ctnet-volume``) take their weights from the same folder unless ``fid.weights_2d/3d`` say otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from ctrag.data.case import Corpus
from ctrag.data.nifti import Volume
from ctrag.errors import ConfigError, InvalidInputError
from ctrag.evaluation.ablation import AblationRunner, select_cases, select_report_cases
from ctrag.evaluation.fid import FIDConfig, FIDEvaluator
from ctrag.evaluation.generation_config import GenerationEvalConfig
from ctrag.evaluation.tables import write_ablation_outputs
from ctrag.utils.hashing import sha256_json
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)


class CoarseSegmenter:
    """Coarse-label segmenter for real and generated CTs, carrying the name of the backend it actually runs.

    Why resolve the backend once: the tables must say which segmenter produced Dice/HD95 (TotalSegmentator, as in
    the paper, or the classical fallback), and a run must not switch backends midway.
    """

    def __init__(self, config: Any, description: str) -> None:
        self.config = config
        self.lenient = dataclasses.replace(config, check_intensity=False)
        self.description = description

    def __call__(self, volume: Volume) -> Volume:
        from ctrag.segment import segment_volume

        return segment_volume(volume, self.config if not volume.meta.get("generated") else self.lenient)


def make_segmenter(segment_config: Any | None = None) -> CoarseSegmenter:
    """TotalSegmentator when the ``segment`` section asks for it and its weights are on disk, else classical."""
    from ctrag.segment import SegmentConfig, totalsegmentator_status

    cfg = segment_config or SegmentConfig()
    if cfg.labels != "coarse":
        raise ConfigError("evaluation compares coarse labels: set segment.labels to 'coarse'")
    if cfg.method == "totalsegmentator":
        status = totalsegmentator_status(cfg.totalseg.weights_dir, fast=cfg.totalseg.fast)
        if status.available:
            model = "fast 3 mm model" if cfg.totalseg.fast else "1.5 mm models"
            return CoarseSegmenter(cfg, f"TotalSegmentator ({model}, weights {status.weights_dir}) -> coarse labels")
        logger.warning("TotalSegmentator unavailable (%s); segmenting with the classical backend", status.reason())
        classical = dataclasses.replace(cfg, method="classical")
        return CoarseSegmenter(
            classical, f"classical (HU + morphology) -> coarse labels; TotalSegmentator unavailable: {status.reason()}"
        )
    return CoarseSegmenter(cfg, "classical (HU + morphology) -> coarse labels, not TotalSegmentator")


def resolve_fid_config(fid: FIDConfig, classifier_dir: str | None) -> FIDConfig:
    """Fill the ``ctnet-*`` extractors' weights with the classifier folder when none are given."""
    changes: dict[str, Any] = {}
    if fid.extractor_2d.startswith("ctnet-") and fid.weights_2d is None and classifier_dir:
        changes["weights_2d"] = classifier_dir
    if fid.extractor_3d.startswith("ctnet-") and fid.weights_3d is None and classifier_dir:
        changes["weights_3d"] = classifier_dir
    return dataclasses.replace(fid, **changes) if changes else fid


def evaluate_generation(
    config: GenerationEvalConfig,
    out_dir: str | os.PathLike[str],
    *,
    segment_config: Any | None = None,
    pipeline: Any | None = None,
    corpus: Corpus | None = None,
    space: Any | None = None,
    command: str = "",
    progress: ProgressFn | None = None,
) -> dict[str, Path]:
    """Run the ablation described by ``config`` and write tables and figures under ``out_dir``.

    With no ctrag method (``config.methods`` empty) only the ``config.external`` tables are scored and no generator
    is loaded; ``space`` (the preset's ``preprocess`` section) then sets the evaluation grid that the generator's
    image space would otherwise set.
    """
    from ctrag.evaluation.classifier import ClinicalClassifier
    from ctrag.evaluation.external import load_external_table

    own_methods = bool(config.methods)
    if own_methods and pipeline is None and not config.pipeline:
        raise ConfigError("evaluation.pipeline: give the generator run folder (`ctrag train ...` output)")
    if corpus is None:
        if not config.corpus:
            raise ConfigError("evaluation.corpus: give the corpus folder written by `ctrag ingest`")
        corpus = Corpus.load(config.corpus)
    externals = [load_external_table(name, path) for name, path in config.external.items()]
    cases = select_cases(list(corpus), config)
    report_cases = select_report_cases(list(corpus), config)
    ref_cases = [corpus.get(cid) for cid in config.spatial_reference_case_ids]
    missing_masks = [c.case_id for c in ref_cases if not c.mask_path]
    if missing_masks:
        raise InvalidInputError(f"evaluation.spatial_reference_case_ids without a mask: {missing_masks}")
    if own_methods and pipeline is None:
        assert config.pipeline is not None
        from ctrag.generation.pipeline import GenerationPipeline

        pipeline = GenerationPipeline.from_pretrained(config.pipeline, index_dir=config.index, device=config.device)
    retriever = getattr(pipeline, "retriever", None)
    index = getattr(retriever, "index", None)
    generator_id = (
        sha256_json(
            {
                "weights": getattr(pipeline, "weights", repr(pipeline)),
                "index_cases": sorted(index.case_ids) if index is not None else None,
            }
        )
        if own_methods
        else "none (external outputs only)"
    )
    classifier = ClinicalClassifier.load(config.classifier, device=config.device) if config.classifier else None
    fid_cfg = resolve_fid_config(config.fid, config.classifier)
    # Real and generated CTs are cut from the generator's image space, so both sides cover the same field of view.
    if own_methods:
        space = getattr(getattr(pipeline, "config", None), "preprocess", None)
    fid = FIDEvaluator.from_config(fid_cfg, space) if space is not None else FIDEvaluator.from_config(fid_cfg)
    segmenter = make_segmenter(segment_config)
    out = Path(out_dir)

    def generate(report: str, **kwargs: Any) -> Any:
        assert pipeline is not None
        return pipeline(report, **kwargs)

    runner = AblationRunner(
        config,
        generate if own_methods else None,
        segmenter=segmenter,
        segmenter_name=segmenter.description,
        generator_id=generator_id,
        cache_dir=out / "generated",
        index=index,
        classifier=classifier,
        fid=fid,
        progress=progress,
        externals=externals,
    )
    result = runner.run(cases, ref_cases, report_cases)
    return write_ablation_outputs(result, out, command=command, figures=config.figures)
