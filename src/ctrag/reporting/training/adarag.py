"""AdaRAG-CT training recipe: targets with ``[RAG]`` before the sentences to retrieve for, contexts mixed.

Where ``[RAG]`` goes (``rag_placement``): ``abnormal`` (default) flags each abnormal sentence, a stand-in for
"sentences the model would get wrong"; ``uncertain`` follows Self-RAG / AdaRAG-CT more closely: the model before
``[RAG]`` training (the frozen ``base_lm``, or the tiny decoder after ``warmup_steps`` of plain-text training)
scores every train sentence by its teacher-forced mean token NLL given the preceding report text and the same
prompt the model sees (visual slots, concepts, no context block), and the sentences above the
``rag_uncertainty_quantile`` of all scores are flagged. Both rules only insert the token; the text is unchanged.

Why the mix: with oracle contexts only (the sentences of the case's own report) the model learns to copy and
breaks on the noisier retrieved sentences it sees at inference; with retrieved contexts only it rarely sees a
context that actually holds the answer. Each training example draws oracle contexts with probability
``oracle_fraction``, else the bank's nearest train sentences for each ``[RAG]`` sentence (own case and patient
excluded, as at inference).

Fine-tuning: with ``base_lm`` (a local HF causal LM folder) and ``peft`` installed the base is frozen and LoRA
adapters are trained, plus the embedding row of the new ``[RAG]`` token (peft's trainable tokens; the rest of the
embedding matrix stays frozen); with the tiny default decoder (trained here from scratch on the train reports) the
whole LM is trained — a full fine-tune. Device, bf16, LoRA and processes: the ``runtime`` section
(:mod:`ctrag.reporting.training.runtime`).

Data honesty: the shipped data has no CT with its own radiologist report, so training here is text-only (all-zero
visual tokens, "no image"); the visual prefix is wired but learns nothing from these data. Only ``train`` cases
are read (``LeakageError`` otherwise).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrag.data.case import Case
from ctrag.errors import ConfigError, InvalidInputError, LeakageError
from ctrag.reporting.adarag import RAG_TOKEN, AdaRAGConfig, AdaRAGModel, _bank_hits, rag_target
from ctrag.reporting.concepts import concept_prompt, labels_as_probabilities
from ctrag.reporting.lm import TinyDecoderConfig
from ctrag.reporting.sentence_bank import SentenceBank
from ctrag.reporting.sentences import tag_report
from ctrag.reporting.training.runtime import LMRuntime, StepRunner, training_lm
from ctrag.reporting.visual import VisualConfig, VisualFrontEnd
from ctrag.utils.progress import ProgressFn


@dataclass
class AdaRAGTrainConfig:
    steps: int = 200
    batch_size: int = 4
    lr: float = 1e-3
    oracle_fraction: float = 0.5
    seed: int = 0
    max_cases: int | None = None
    lm: TinyDecoderConfig = field(default_factory=TinyDecoderConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)
    model: AdaRAGConfig = field(default_factory=AdaRAGConfig)
    rag_placement: str = "abnormal"
    rag_uncertainty_quantile: float = 0.7
    warmup_steps: int = 100
    runtime: LMRuntime = field(default_factory=LMRuntime)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0 or not 0 <= self.oracle_fraction <= 1:
            raise ConfigError("AdaRAGTrainConfig: steps >= 0, batch_size >= 1, lr > 0, oracle_fraction in [0, 1]")
        if self.rag_placement not in PLACEMENTS:
            raise ConfigError(f"AdaRAGTrainConfig: rag_placement is one of {PLACEMENTS}, got {self.rag_placement!r}")
        if not 0 < self.rag_uncertainty_quantile < 1 or self.warmup_steps < 0:
            raise ConfigError("AdaRAGTrainConfig: rag_uncertainty_quantile in (0, 1), warmup_steps >= 0")


#: ``[RAG]`` placement rules of :class:`AdaRAGTrainConfig` (see the module docstring).
PLACEMENTS = ("abnormal", "uncertain")


def check_train(cases: Sequence[Case], method: str) -> list[Case]:
    bad = [c.case_id for c in cases if c.split != "train"]
    if bad:
        raise LeakageError(f"{method} training reads train cases only; {bad[:5]} are not")
    used = [c for c in cases if c.has_report]
    if not used:
        raise InvalidInputError(f"{method} training needs train cases with report text; none given")
    return used


def training_contexts(
    model: AdaRAGModel,
    bank: SentenceBank,
    case: Case,
    oracle: bool,
    rng: random.Random,
    flags: Sequence[bool] | None = None,
) -> list[str]:
    """The context block of one example: per flagged sentence (default: abnormal) its own text (oracle) or the
    bank's neighbours."""
    ctx: list[str] = []
    sents = tag_report(case.report_findings, case.report_impression)
    for s, flagged in zip(sents, [x.abnormal for x in sents] if flags is None else flags, strict=True):
        if not flagged:
            continue
        if oracle:
            got = [s.text]
        else:
            q = model.encoder.encode_text([s.text])[0]
            regions = list(s.regions) or ["lung"]
            hits = _bank_hits(bank, regions, q, model.cfg.top_k, {case.case_id}, {case.patient_id})
            got = [h["text"] for h in hits]
        ctx += [t for t in got if t not in ctx]
    rng.shuffle(ctx)
    return ctx


def sentence_nll(model: AdaRAGModel, cases: Sequence[Case], concepts: Callable[[Case], str]) -> list[list[float]]:
    """Per case, per sentence of :func:`tag_report`: mean token NLL given the preceding sentences (NaN: no room).

    One forward per case: the target ids are built sentence by sentence (a space before each but the first, as
    :func:`rag_target` joins them) so each sentence's span is known exactly.
    """
    out: list[list[float]] = []
    for c in cases:
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for i, s in enumerate(tag_report(c.report_findings, c.report_impression)):
            t = model.lm.token_ids(s.text if i == 0 else " " + s.text)
            spans.append((len(ids), len(ids) + len(t)))
            ids += t
        nll = model.lm.token_nll(model.prompt(None, [], concepts(c)), ids) if ids else torch.zeros(0)
        out.append([float(nll[a:b].mean()) if a < b <= nll.shape[0] else math.nan for a, b in spans])
    return out


def uncertain_flags(scores: Sequence[Sequence[float]], quantile: float) -> tuple[list[list[bool]], float]:
    """Flag sentences whose NLL is above the ``quantile`` of all scored ones; returns (flags, threshold)."""
    scored = np.asarray([v for row in scores for v in row if math.isfinite(v)], dtype=np.float64)
    if scored.size == 0:
        raise InvalidInputError("uncertain [RAG] placement: no sentence could be scored (empty reports?)")
    thr = float(np.quantile(scored, quantile))
    return [[math.isfinite(v) and v > thr for v in row] for row in scores], thr


def _step(model: AdaRAGModel, runner: StepRunner, prompts: list[Any], targets: list[str]) -> float:
    mine, wanted = runner.shard(prompts), runner.shard(targets)
    return runner.step(lambda: model.lm.loss(mine, wanted))


def train_adarag(
    cases: Sequence[Case],
    config: AdaRAGTrainConfig | None = None,
    *,
    base_lm: str | None = None,
    progress: ProgressFn | None = None,
) -> tuple[AdaRAGModel, SentenceBank, dict[str, Any]]:
    cfg = config or AdaRAGTrainConfig()
    used = check_train(cases, "AdaRAG-CT")[: cfg.max_cases]
    rng = random.Random(cfg.seed)
    state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    started = time.time()
    try:
        # A given base gets [RAG] before LoRA wraps it, so the token's embedding row trains with the adapters.
        tokens = [RAG_TOKEN] if base_lm else []
        lm, finetune = training_lm(base_lm, cfg.runtime, [c.report_text for c in used], cfg.lm, trainable_tokens=tokens)
        visual = VisualFrontEnd(cfg.visual, device=str(lm.device))
        model = AdaRAGModel(lm, cfg.model, visual.token_dim)
        model.visual = visual
        bank = SentenceBank.build(used, model.encoder)
        runner = StepRunner(model, cfg.runtime, lr=cfg.lr, weight_decay=0.01)

        def concepts(c: Case) -> str:
            if cfg.model.concepts.enabled and c.labels is not None:
                return concept_prompt(labels_as_probabilities(c.labels), cfg.model.concepts)
            return ""

        sents = [tag_report(c.report_findings, c.report_impression) for c in used]
        flags = [[s.abnormal for s in row] for row in sents]
        threshold: float | None = None
        n_unscored = 0
        warmup: list[float] = []
        if cfg.rag_placement == "uncertain":
            model.train()
            for step in range(0 if base_lm else cfg.warmup_steps):  # the frozen base needs no warm-up
                batch = rng.sample(range(len(used)), min(cfg.batch_size, len(used)))
                plain = [" ".join(s.text for s in sents[i]) for i in batch]
                pieces = [model.prompt(None, [], concepts(used[i])) for i in batch]
                warmup.append(_step(model, runner, pieces, plain))
                if progress and runner.is_main:
                    progress("warm up adarag", step + 1, cfg.warmup_steps)
            scores = sentence_nll(model, used, concepts)
            n_unscored = sum(not math.isfinite(v) for row in scores for v in row)
            flags, threshold = uncertain_flags(scores, cfg.rag_uncertainty_quantile)
        model.train()
        losses: list[float] = []
        n_oracle = 0
        for step in range(cfg.steps):
            prompts, targets = [], []
            for i in rng.sample(range(len(used)), min(cfg.batch_size, len(used))):
                c = used[i]
                oracle = rng.random() < cfg.oracle_fraction
                n_oracle += int(oracle)
                ctx = training_contexts(model, bank, c, oracle, rng, flags[i])
                prompts.append(model.prompt(None, ctx, concepts(c)))
                targets.append(rag_target(c.report_findings, c.report_impression, flags[i]))
            losses.append(_step(model, runner, prompts, targets))
            if progress and runner.is_main:
                progress("train adarag", step + 1, cfg.steps)
    finally:
        torch.random.set_rng_state(state)
    model.eval()
    summary = {
        "method": "adarag",
        "cases": len(used),
        "report_sources": sorted({c.report_source for c in used}),
        "image_input": "none (text-only training: no CT here has its own report)",
        "finetune": finetune,
        "runtime": runner.info(),
        "rag_token": RAG_TOKEN,
        "rag_placement": cfg.rag_placement,
        "rag_targets": (
            "before abnormal sentences"
            if threshold is None
            else f"before sentences with base-LM mean token NLL > {threshold:.4f} "
            f"(quantile {cfg.rag_uncertainty_quantile} of all train sentences)"
        ),
        "rag_nll_threshold": threshold,
        "rag_sentences": sum(map(len, flags)),
        "rag_tagged": sum(map(sum, flags)),
        "rag_unscored_sentences": n_unscored,  # past the LM context: never flagged under "uncertain"
        "warmup_steps": len(warmup),
        "warmup_loss_last": warmup[-1] if warmup else None,
        "oracle_examples": n_oracle,
        "concepts": cfg.model.concepts.enabled,
        "concept_cases": sum(c.labels is not None for c in used) if cfg.model.concepts.enabled else 0,
        "steps": cfg.steps,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "seconds": round(time.time() - started, 1),
        "config": asdict(cfg),
    }
    return model, bank, summary


def save_adarag(model: AdaRAGModel, bank: SentenceBank, summary: dict[str, Any], folder: str | Path) -> Path:
    import json

    from ctrag.utils.atomic import atomic_write_text

    out = model.save(folder, bank)
    atomic_write_text(out / "training_summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return out
