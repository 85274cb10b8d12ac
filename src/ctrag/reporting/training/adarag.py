"""AdaRAG-CT training recipe: targets with ``[RAG]`` before abnormal sentences, contexts mixed oracle/retrieved.

Why the mix: with oracle contexts only (the sentences of the case's own report) the model learns to copy and
breaks on the noisier retrieved sentences it sees at inference; with retrieved contexts only it rarely sees a
context that actually holds the answer. Each training example draws oracle contexts with probability
``oracle_fraction``, else the bank's nearest train sentences for each ``[RAG]`` sentence (own case and patient
excluded, as at inference).

Fine-tuning: with ``base_lm`` (a local HF causal LM folder) and ``peft`` installed the base is frozen and LoRA
adapters are trained (plus the new ``[RAG]`` embedding row through the adapters' saved embedding); with the tiny
default decoder (trained here from scratch on the train reports) the whole LM is trained — a full fine-tune.

Data honesty: the shipped data has no CT with its own radiologist report, so training here is text-only (all-zero
visual tokens, "no image"); the visual prefix is wired but learns nothing from these data. Only ``train`` cases
are read (``LeakageError`` otherwise).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ctrag.data.case import Case
from ctrag.errors import ConfigError, InvalidInputError, LeakageError
from ctrag.reporting.adarag import RAG_TOKEN, AdaRAGConfig, AdaRAGModel, _bank_hits, rag_target
from ctrag.reporting.concepts import concept_prompt, labels_as_probabilities
from ctrag.reporting.lm import LoRASettings, TinyDecoderConfig, load_causal_lm, tiny_report_lm, with_lora
from ctrag.reporting.sentence_bank import SentenceBank
from ctrag.reporting.sentences import tag_report
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

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0 or not 0 <= self.oracle_fraction <= 1:
            raise ConfigError("AdaRAGTrainConfig: steps >= 0, batch_size >= 1, lr > 0, oracle_fraction in [0, 1]")


def check_train(cases: Sequence[Case], method: str) -> list[Case]:
    bad = [c.case_id for c in cases if c.split != "train"]
    if bad:
        raise LeakageError(f"{method} training reads train cases only; {bad[:5]} are not")
    used = [c for c in cases if c.has_report]
    if not used:
        raise InvalidInputError(f"{method} training needs train cases with report text; none given")
    return used


def training_contexts(
    model: AdaRAGModel, bank: SentenceBank, case: Case, oracle: bool, rng: random.Random
) -> list[str]:
    """The context block of one example: per abnormal sentence its own text (oracle) or the bank's neighbours."""
    ctx: list[str] = []
    for s in tag_report(case.report_findings, case.report_impression):
        if not s.abnormal:
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
        finetune = "full (tiny default decoder trained here)"
        if base_lm:
            lm = load_causal_lm(base_lm)
            try:
                import peft  # noqa: F401

                lm = with_lora(lm, LoRASettings())
                finetune = "LoRA on a frozen base"
            except ImportError:
                finetune = "full (peft not installed)"
        else:
            lm = tiny_report_lm([c.report_text for c in used], cfg.lm)
        visual = VisualFrontEnd(cfg.visual)
        model = AdaRAGModel(lm, cfg.model, visual.token_dim)
        model.visual = visual
        bank = SentenceBank.build(used, model.encoder)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr)
        model.train()
        losses: list[float] = []
        n_oracle = 0
        for step in range(cfg.steps):
            prompts, targets = [], []
            for c in rng.sample(used, min(cfg.batch_size, len(used))):
                oracle = rng.random() < cfg.oracle_fraction
                n_oracle += int(oracle)
                concepts = ""
                if cfg.model.concepts.enabled and c.labels is not None:
                    concepts = concept_prompt(labels_as_probabilities(c.labels), cfg.model.concepts)
                prompts.append(model.prompt(None, training_contexts(model, bank, c, oracle, rng), concepts))
                targets.append(rag_target(c.report_findings, c.report_impression))
            loss = model.lm.loss(prompts, targets)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if progress:
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
        "rag_token": RAG_TOKEN,
        "rag_targets": "before abnormal sentences",
        "oracle_examples": n_oracle,
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
