"""Reg2RG training recipe: text warm-up on report-only train reports, then region-report alignment on CT pairs.

Why two stages: the shipped data has hundreds of real CT-RATE train reports without CTs and a handful of CTs
whose text is annotation-derived (or pseudo-paired by retrieval, :mod:`ctrag.data.pseudo_pairs`); no CT here comes
with its own radiologist report. Stage 1 teaches the LM the language of region paragraphs from the report-only
cases (visual slots present but holding all-zero features, i.e. "no image"); stage 2 trains heads and LM on the
(CT, text) pairs with the alignment objective of :class:`ctrag.reporting.reg2rg.Reg2RGModel` (region prefixes,
slot order shuffled each step). The summary written next to the model counts the pairs by ``report_source`` and
lists every pair, so a model trained on pseudo pairs or annotation-derived captions always says so.

Only ``train`` cases are read (a :class:`~ctrag.errors.LeakageError` otherwise): the tokenizer, the warm-up and the
pairs all come from the training split.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch

from ctrag.data.case import Case
from ctrag.errors import ConfigError, InvalidInputError, LeakageError
from ctrag.reporting.lm import TinyDecoderConfig
from ctrag.reporting.reg2rg import Reg2RGConfig, Reg2RGModel, Reg2RGSample, training_samples
from ctrag.reporting.training.runtime import LMRuntime, StepRunner, training_lm
from ctrag.reporting.visual import VisualConfig, VisualFeatures, VisualFrontEnd
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"


@dataclass
class Reg2RGTrainConfig:
    """``text_steps``: warm-up steps on report-only cases (``text_batch`` reports each); ``steps``: paired steps
    (``batch_size`` CTs each); ``targets_per_case``: region/impression targets drawn per case and step (CPU cost);
    ``lr``: AdamW learning rate of heads and LM."""

    steps: int = 100
    text_steps: int = 200
    batch_size: int = 2
    text_batch: int = 4
    targets_per_case: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    max_text_cases: int | None = None
    lm: TinyDecoderConfig = field(default_factory=TinyDecoderConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)
    model: Reg2RGConfig = field(default_factory=Reg2RGConfig)
    runtime: LMRuntime = field(default_factory=LMRuntime)

    def __post_init__(self) -> None:
        for name in ("steps", "text_steps"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"Reg2RGTrainConfig: {name} must be >= 0")
        for name in ("batch_size", "text_batch"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"Reg2RGTrainConfig: {name} must be >= 1")
        if not self.lr > 0:
            raise ConfigError("Reg2RGTrainConfig: lr must be > 0")


def _check_train(cases: Sequence[Case], role: str) -> None:
    bad = [c.case_id for c in cases if c.split != TRAIN_SPLIT]
    if bad:
        raise LeakageError(f"Reg2RG training reads {TRAIN_SPLIT} cases only; {role} cases {bad[:5]} are not")


def blank_features(template: VisualFeatures) -> VisualFeatures:
    """All-zero features shaped like ``template`` ("no image"), for the text warm-up."""
    return VisualFeatures(
        torch.zeros_like(template.global_vector),
        torch.zeros_like(template.global_tokens),
        torch.zeros_like(template.texture),
        torch.zeros_like(template.geometry),
        torch.zeros_like(template.present),
        template.regions,
        [0] * len(template.regions),
        "none",
        template.label_set,
        ["text warm-up: no image"],
    )


def pair_features(
    cases: Sequence[Case], visual: VisualFrontEnd, progress: ProgressFn | None = None
) -> list[VisualFeatures]:
    """Frozen visual features of each pair's CT (its manifest mask if it has one, else the segmenter's)."""
    from ctrag.data.nifti import load_volume

    out = []
    for i, c in enumerate(cases):
        assert c.volume_path is not None
        vol = load_volume(c.volume_path)
        mask = load_volume(c.mask_path) if c.mask_path else None
        if mask is not None and c.mask_source:
            mask.meta["mask_source"] = c.mask_source
        out.append(visual.extract(vol, mask))
        if progress:
            progress("visual features", i + 1, len(cases))
    return out


def train_reg2rg(
    pair_cases: Sequence[Case],
    text_cases: Sequence[Case] = (),
    config: Reg2RGTrainConfig | None = None,
    *,
    base_lm: str | None = None,
    visual: VisualFrontEnd | None = None,
    progress: ProgressFn | None = None,
) -> tuple[Reg2RGModel, dict[str, Any]]:
    """Train a Reg2RG model; returns it with the training summary that :func:`save_reg2rg` records."""
    cfg = config or Reg2RGTrainConfig()
    _check_train(pair_cases, "pair")
    _check_train(text_cases, "text")
    pairs = [c for c in pair_cases if c.has_volume and c.has_report]
    skipped = sorted(c.case_id for c in pair_cases if not (c.has_volume and c.has_report))
    if not pairs:
        raise InvalidInputError("Reg2RG training needs train cases with both a CT volume and report text; none given")
    texts = [c for c in text_cases if c.has_report]
    if cfg.max_text_cases is not None:
        texts = texts[: cfg.max_text_cases]
    started = time.time()
    rng = random.Random(cfg.seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)  # restored at the end: initialisation of the heads is seeded, global state kept
    try:
        lm, finetune = training_lm(base_lm, cfg.runtime, [c.report_text for c in [*texts, *pairs]], cfg.lm)
        visual = visual or VisualFrontEnd(cfg.visual, device=str(lm.device))
        model = Reg2RGModel(lm, visual, cfg.model)
        runner = StepRunner(model, cfg.runtime, lr=cfg.lr, weight_decay=cfg.weight_decay)
        feats = pair_features(pairs, visual, progress if runner.is_main else None)
        regions = cfg.model.regions
        pair_samples = [training_samples(c.report_findings, c.report_impression, regions) for c in pairs]
        pair_data = [(f, s) for f, s in zip(feats, pair_samples, strict=True) if s]
        text_data = [
            (blank_features(feats[0]), training_samples(c.report_findings, c.report_impression, regions)) for c in texts
        ]
        text_data = [(f, s) for f, s in text_data if s]
        model.train()
        rank = runner.dist.rank
        losses: dict[str, list[float]] = {"text": [], "pairs": []}
        for stage, data, steps, batch in (
            ("text", text_data, cfg.text_steps, cfg.text_batch),
            ("pairs", pair_data, cfg.steps, cfg.batch_size),
        ):
            if not data or not steps:
                continue
            for step in range(steps):
                chosen = []
                for _ in range(min(batch, len(data))):
                    f, samples = data[rng.randrange(len(data))]
                    chosen.append((f, rng.sample(samples, min(cfg.targets_per_case, len(samples)))))
                # Several processes: each shuffles its own slice's region order, so the shared draws stay in step.
                order_rng = rng if runner.dist.world_size == 1 else random.Random(f"{cfg.seed}/{stage}/{step}/{rank}")
                part = runner.shard(chosen)
                losses[stage].append(runner.step(partial(model.loss, part, order_rng)))
                if progress and runner.is_main:
                    progress(f"train {stage}", step + 1, steps)
        model.eval()
    finally:
        torch.random.set_rng_state(torch_state)
    sources = Counter(c.report_source for c in pairs)
    summary: dict[str, Any] = {
        "method": "reg2rg",
        "n_pairs": len(pairs),
        "report_sources": dict(sorted(sources.items())),
        "pseudo_paired": int(sources.get("pseudo-paired", 0)),
        "real_radiologist_pairs": int(sources.get("radiologist", 0)),
        "pairs": [
            {
                "case_id": c.case_id,
                "report_source": c.report_source,
                "pairing": c.pairing,
                "mask": "case" if c.mask_path else "segmenter",
                "targets": len(s),
            }
            for c, s in zip(pairs, pair_samples, strict=True)
        ],
        "skipped_cases": skipped,
        "text_cases": len(text_data),
        "text_report_sources": dict(sorted(Counter(c.report_source for c in texts).items())),
        "config": _jsonable(asdict(cfg)),
        "base_lm": base_lm,
        "finetune": finetune,
        "runtime": runner.info(),
        "loss_first_last": {k: [v[0], v[-1]] if v else None for k, v in losses.items()},
        "seconds": round(time.time() - started, 1),
    }
    if not sources.get("radiologist"):
        summary["note"] = "no (CT, own radiologist report) pair was used: pair texts are " + ", ".join(
            f"{k} x{v}" for k, v in sorted(sources.items())
        )
    return model, summary


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


__all__ = ["Reg2RGSample", "Reg2RGTrainConfig", "blank_features", "pair_features", "train_reg2rg"]
