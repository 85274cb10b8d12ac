"""DiffVP training recipe: text warm-up (blank features) on train reports, then CT pairs against normal references.

Data honesty: the only CTs here carry annotation-derived text (or pseudo-paired reports), none its own radiologist
report; the summary lists each pair's ``report_source``. The normal-reference pool is built from the same
(train) cases, so training never sees a reference of another split; the pool's features are saved with the
model and used at inference (the paper draws test references from a test-split pool; a new CT given to
``ctrag report`` has no split, so the saved train pool is used — a documented deviation).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ctrag.data.case import Case
from ctrag.errors import ConfigError, InvalidInputError
from ctrag.reporting.diffvp import DiffVPConfig, DiffVPModel, Tokens, visual_tokens
from ctrag.reporting.lm import TinyDecoderConfig
from ctrag.reporting.normal_reference import NormalReferencePool, Pairing
from ctrag.reporting.training.adarag import check_train
from ctrag.reporting.training.runtime import LMRuntime, StepRunner, training_lm
from ctrag.reporting.visual import VisualConfig, VisualFrontEnd
from ctrag.utils.progress import ProgressFn


@dataclass
class DiffVPTrainConfig:
    steps: int = 50
    text_steps: int = 100
    batch_size: int = 2
    lr: float = 1e-3
    seed: int = 0
    lm: TinyDecoderConfig = field(default_factory=TinyDecoderConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)
    model: DiffVPConfig = field(default_factory=DiffVPConfig)
    runtime: LMRuntime = field(default_factory=LMRuntime)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.text_steps < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError("DiffVPTrainConfig: steps, text_steps >= 0, batch_size >= 1, lr > 0")


def train_diffvp(
    pair_cases: Sequence[Case],
    text_cases: Sequence[Case] = (),
    config: DiffVPTrainConfig | None = None,
    *,
    base_lm: str | None = None,
    progress: ProgressFn | None = None,
) -> tuple[DiffVPModel, list[tuple[str, Any]], dict[str, Any]]:
    from ctrag.reporting.training.reg2rg import pair_features

    cfg = config or DiffVPTrainConfig()
    pairs = [c for c in check_train(pair_cases, "DiffVP") if c.has_volume]
    texts = check_train(text_cases, "DiffVP") if text_cases else []
    if not pairs:
        raise InvalidInputError("DiffVP training needs train cases with a CT volume and text")
    rng = random.Random(cfg.seed)
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    started = time.time()
    try:
        lm, finetune = training_lm(base_lm, cfg.runtime, [c.report_text for c in [*texts, *pairs]], cfg.lm)
        visual = VisualFrontEnd(cfg.visual, device=str(lm.device))
        model = DiffVPModel(lm, visual, cfg.model)
        runner = StepRunner(model, cfg.runtime, lr=cfg.lr, weight_decay=0.01)
        feats = pair_features(pairs, visual, progress if runner.is_main else None)
        vecs = torch.stack([f.global_vector.float().cpu() for f in feats]).numpy()
        pool = NormalReferencePool(pairs, "train", vectors=vecs)
        pos = {c.case_id: i for i, c in enumerate(pairs)}
        pairing: Pairing = "nearest" if cfg.model.pairing == "nearest" else "random"
        examples: list[tuple[Tokens, Tokens, str, Any]] = []
        chosen: dict[str, str] = {}
        for c, f in zip(pairs, feats, strict=True):
            try:
                j = pool.pick(c, pairing, rng=rng, target_vector=f.global_vector.numpy())
            except InvalidInputError:
                continue
            ref = pool.cases[j]
            chosen[c.case_id] = ref.case_id
            examples.append((visual_tokens(f), visual_tokens(feats[pos[ref.case_id]]), c.report_text, c.labels))
        blank = (torch.zeros(feats[0].global_tokens.shape), torch.zeros(feats[0].texture.shape))
        text_ex = [(blank, blank, c.report_text, c.labels) for c in texts]
        model.train()
        losses: dict[str, list[float]] = {"text": [], "pairs": []}
        for stage, data, steps in (("text", text_ex, cfg.text_steps), ("pairs", examples, cfg.steps)):
            for step in range(steps if data else 0):
                batch = runner.shard(rng.sample(data, min(cfg.batch_size, len(data))))
                losses[stage].append(runner.step(partial(model.loss, batch)))
                if progress and runner.is_main:
                    progress(f"train diffvp {stage}", step + 1, steps)
    finally:
        torch.random.set_rng_state(state)
    model.eval()
    refs = [(c.case_id, feats[pos[c.case_id]]) for c in pool.cases]
    summary = {
        "method": "diffvp",
        "pairs": {c.case_id: c.report_source for c in pairs},
        "text_cases": len(texts),
        "normal_references": [c.case_id for c in pool.cases],
        "pairing": pairing,
        "finetune": finetune,
        "runtime": runner.info(),
        "concepts": cfg.model.anchor.enabled,  # the diagnostic anchor text in the prompt (the head trains either way)
        "reference_of": chosen,
        "loss_last": {k: (v[-1] if v else None) for k, v in losses.items()},
        "seconds": round(time.time() - started, 1),
        "config": asdict(cfg),
    }
    return model, refs, summary


def save_diffvp(model: DiffVPModel, refs: list[tuple[str, Any]], summary: dict[str, Any], folder: str | Path) -> Path:
    import json

    from ctrag.utils.atomic import atomic_write_text

    out = model.save(folder, refs, {"split": "train", "pairing": summary["pairing"]})
    atomic_write_text(out / "training_summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return out
