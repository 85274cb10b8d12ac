"""AdaRAG-CT (issue 13 item 4): the LM emits ``[RAG]`` when unsure; region sentences are then retrieved and injected.

Why adaptive: retrieving for every sentence floods a small LM with contexts it does not need and copies normal
templates; retrieving never leaves it guessing about findings. AdaRAG-CT lets the model itself ask: it is trained on
reports in which ``[RAG]`` precedes the sentences it is likely to get wrong (by default, a documented
simplification, the abnormal sentences by :func:`ctrag.reporting.sentences.sentence_is_abnormal`; training can flag
the sentences the base LM scores with a high NLL instead, see :mod:`ctrag.reporting.training.adarag`), with the
retrieved or the oracle sentences for that sentence placed in the prompt's context block. At inference generation is
greedy and token by token; when ``[RAG]`` is the next token the partial sentence written so far (or the last
sentence when the new one has not started) is tagged with its regions, encoded, and the ``top_k`` nearest bank
sentences of those regions are added to the context; generation then continues with the new context.
``max_retrievals`` caps the emissions (after the cap ``[RAG]`` is masked out); ``no_rag`` masks it from the start
and never touches the bank; ``oracle`` takes the contexts from the case's own report (an upper bound, evaluation
only).

Leakage guard: the bank is built from ``train`` cases only, and a hit from the query's own case or patient is
dropped. The text encoder of the bank is :class:`HashingTextEncoder` (hashed word uni-/bigrams): it has no
weights, so a model folder carries everything it needs and nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from ctrag.encoders.base import Encoder
from ctrag.errors import ConfigError, InvalidInputError, WeightsNotFoundError
from ctrag.reporting.concepts import ConceptConfig, concept_prompt
from ctrag.reporting.lm import Piece, PrefixProjector, ReportLM
from ctrag.reporting.sentence_bank import SentenceBank, SentenceHit
from ctrag.reporting.sentences import REGIONS, split_report, tag_regions, tag_report
from ctrag.reporting.visual import VisualConfig, VisualFrontEnd

logger = logging.getLogger(__name__)

RAG_TOKEN = "[RAG]"
MODEL_META = "adarag.json"
Mode = Literal["adaptive", "no_rag", "oracle"]
_WORD_RE = re.compile(r"[a-z0-9]+")


class HashingTextEncoder(Encoder):
    """Hashed word unigrams + bigrams, L2-normalised: weightless, deterministic, fit for sentence look-up."""

    name = "hashing-bow"

    def __init__(self, dim: int = 512) -> None:
        if dim < 8:
            raise ConfigError("HashingTextEncoder: dim must be >= 8")
        self._dim = int(dim)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return f"hashing-bow@{self._dim}"

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = _WORD_RE.findall(text.lower())
            for tok in [*words, *(f"{a}_{b}" for a, b in itertools.pairwise(words))]:
                h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
                out[i, h % self._dim] += 1.0 if (h >> 63) & 1 else -1.0
            n = np.linalg.norm(out[i])
            out[i] = out[i] / n if n > 0 else np.eye(1, self._dim, dtype=np.float32)[0]
        return out


class ContextSource(Protocol):
    """What AdaRAG-CT retrieves from: a sentence bank (or a stand-in in tests)."""

    def search(
        self, query_vec: np.ndarray, region: str, k: int, *, abnormal: bool | None = ..., distinct_text: bool = ...
    ) -> list[SentenceHit]: ...


@dataclass(frozen=True)
class AdaRAGConfig:
    """``top_k``: sentences injected per emission; ``max_retrievals``: emissions honoured per report;
    ``max_context_sentences``: oldest contexts dropped beyond this; ``prefix_tokens``: visual tokens (0: text only)."""

    top_k: int = 3
    max_retrievals: int = 4
    max_new_tokens: int = 160
    max_context_sentences: int = 8
    prefix_tokens: int = 8
    encoder_dim: int = 512
    concepts: ConceptConfig = field(default_factory=lambda: ConceptConfig(enabled=False))

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.max_retrievals < 0 or self.max_new_tokens < 1 or self.prefix_tokens < 0:
            raise ConfigError("AdaRAGConfig: top_k, max_new_tokens >= 1; max_retrievals, prefix_tokens >= 0")


@dataclass
class Retrieval:
    """One honoured ``[RAG]`` emission: the partial sentence, its regions and the sentences injected."""

    partial: str
    regions: list[str]
    sentences: list[dict[str, Any]]


@dataclass
class AdaRAGReport:
    text: str
    mode: str
    retrievals: list[Retrieval]
    prompt_context: list[str]
    notes: list[str] = field(default_factory=list)
    concepts: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "adarag",
            "mode": self.mode,
            "report": self.text,
            "sentences": [{"text": s} for s in split_report(self.text)],
            "retrievals": [asdict(r) for r in self.retrievals],
            "context": self.prompt_context,
            "concepts": self.concepts,
            "notes": self.notes,
        }


def context_text(sentences: Sequence[str]) -> str:
    """The context block put before ``Report:``; the same wording in training and inference."""
    return ("Context: " + " ".join(sentences) + " ") if sentences else ""


def rag_target(findings: str, impression: str = "", flags: Sequence[bool] | None = None) -> str:
    """A training target: the report's sentences with ``[RAG]`` before each flagged one.

    ``flags`` (one per sentence of :func:`tag_report`) come from the placement rule; without them the abnormal
    sentences are flagged (placement ``abnormal``). The text between the tokens is the same for any flags.
    """
    sents = tag_report(findings, impression)
    marks = [s.abnormal for s in sents] if flags is None else list(flags)
    if len(marks) != len(sents):
        raise InvalidInputError(f"rag_target: {len(marks)} flags for {len(sents)} sentences")
    return " ".join(f"{RAG_TOKEN} {s.text}" if m else s.text for s, m in zip(sents, marks, strict=True))


class AdaRAGModel(nn.Module):
    """A :class:`ReportLM` with ``[RAG]`` and a projection of visual global tokens into ``prefix_tokens`` slots."""

    def __init__(self, lm: ReportLM, config: AdaRAGConfig | None = None, visual_dim: int = 0) -> None:
        super().__init__()
        self.cfg = config or AdaRAGConfig()
        self.lm = lm
        self.rag_id = lm.add_special_tokens([RAG_TOKEN])[0]
        self.visual_dim = int(visual_dim)
        self.project = (
            PrefixProjector(self.visual_dim, lm.hidden_size) if self.visual_dim and self.cfg.prefix_tokens else None
        )
        self.encoder = HashingTextEncoder(self.cfg.encoder_dim)
        self.visual: VisualFrontEnd | None = None  # set by training/loading when the model reads CTs

    # ------------------------------------------------------------------ prompt
    def prompt(self, visual: torch.Tensor | None, context: Sequence[str], concepts: str = "") -> list[Piece]:
        pieces: list[Piece] = []
        if self.project is not None:
            tokens = visual if visual is not None else torch.zeros(self.cfg.prefix_tokens, self.visual_dim)
            tokens = _fit_tokens(tokens.float(), self.cfg.prefix_tokens)
            pieces += ["Image: ", self.project(tokens.to(self.lm.device))]
        text = concepts + context_text(context[-self.cfg.max_context_sentences :]) + "Report:"
        pieces.append(text)
        return pieces

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        bank: ContextSource | None,
        *,
        visual: torch.Tensor | None = None,
        mode: Mode = "adaptive",
        own_report: str | None = None,
        exclude_case_ids: Sequence[str] = (),
        exclude_patient_ids: Sequence[str] = (),
        concept_probs: Sequence[float] | None = None,
        top_k: int | None = None,
        max_retrievals: int | None = None,
    ) -> AdaRAGReport:
        """Greedy generation with adaptive retrieval (see the module docstring for the modes)."""
        k = self.cfg.top_k if top_k is None else int(top_k)
        cap = self.cfg.max_retrievals if max_retrievals is None else int(max_retrievals)
        if k < 1 or cap < 0:
            raise InvalidInputError("top_k must be >= 1 and max_retrievals >= 0")
        if mode not in ("adaptive", "no_rag", "oracle"):
            raise InvalidInputError(f"unknown AdaRAG mode {mode!r}")
        if mode == "oracle" and not (own_report and own_report.strip()):
            raise InvalidInputError("oracle mode takes its contexts from the case's own report; none was given")
        if mode == "adaptive" and bank is None:
            raise InvalidInputError("adaptive retrieval needs a sentence bank (or use no_rag)")
        concepts = ""
        notes: list[str] = []
        if concept_probs is not None and self.cfg.concepts.enabled:
            concepts = concept_prompt(concept_probs, self.cfg.concepts)
        own = [s for s in tag_report(own_report or "")] if mode == "oracle" else []
        excl_c, excl_p = set(exclude_case_ids), set(exclude_patient_ids)
        lm = self.lm
        emb = lm.model.get_input_embeddings()
        eos = int(lm.tokenizer.eos_token_id)
        was = lm.model.training
        lm.model.eval()
        context: list[str] = []
        retrievals: list[Retrieval] = []
        out_ids: list[int] = []
        try:
            prefix = lm.embed_pieces(self.prompt(visual, context, concepts))
            for _ in range(self.cfg.max_new_tokens):
                gen = emb(torch.as_tensor(out_ids, dtype=torch.long, device=lm.device))
                x = torch.cat((prefix, gen), dim=0)
                if x.shape[0] >= lm.context_length:
                    notes.append("stopped at the LM context length")
                    break
                logits = lm.model(inputs_embeds=x[None]).logits[0, -1].float()
                if mode == "no_rag" or len(retrievals) >= cap:
                    logits[self.rag_id] = float("-inf")
                nxt = int(torch.argmax(logits))
                if nxt == eos:
                    break
                if nxt != self.rag_id:
                    out_ids.append(nxt)
                    continue
                partial = _partial_sentence(str(lm.tokenizer.decode(out_ids, skip_special_tokens=True)))
                regions = list(tag_regions(partial)) or ["lung"]
                q = self.encoder.encode_text([partial or "findings"])[0]
                if mode == "oracle":
                    got = _oracle_hits(own, regions, q, self.encoder, k)
                else:
                    assert bank is not None
                    got = _bank_hits(bank, regions, q, k, excl_c, excl_p)
                retrievals.append(Retrieval(partial, regions, got))
                context += [g["text"] for g in got if g["text"] not in context]
                prefix = lm.embed_pieces(self.prompt(visual, context, concepts))
        finally:
            lm.model.train(was)
        text = str(lm.tokenizer.decode(out_ids, skip_special_tokens=True)).strip()
        return AdaRAGReport(text, mode, retrievals, list(context), notes, concepts)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike[str], bank: SentenceBank | None = None) -> Path:
        from ctrag.utils.atomic import atomic_write_text

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(out / "lm")
        if self.project is not None:
            torch.save(self.project.state_dict(), out / "projector.pt")
        visual = save_visual(self.visual, out) if self.visual is not None else None
        if bank is not None:
            bank.save(out / "bank")
        meta = {"method": "adarag", "config": asdict(self.cfg), "visual_dim": self.visual_dim, "visual": visual}
        atomic_write_text(out / MODEL_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str = "cpu") -> tuple[AdaRAGModel, SentenceBank | None]:
        root = Path(folder)
        if not (root / MODEL_META).is_file():
            raise WeightsNotFoundError(f"{root} is not an AdaRAG-CT model folder (no {MODEL_META})")
        meta = json.loads((root / MODEL_META).read_text("utf-8"))
        if meta.get("method") != "adarag":
            raise WeightsNotFoundError(f"{root} holds a {meta.get('method')!r} model, not adarag")
        c = dict(meta["config"])
        c["concepts"] = ConceptConfig(**c.get("concepts", {}))
        model = cls(ReportLM.from_pretrained(root / "lm", device=device), AdaRAGConfig(**c), int(meta["visual_dim"]))
        if model.project is not None:
            model.project.load_state_dict(torch.load(root / "projector.pt", map_location=device, weights_only=True))
        if meta.get("visual"):
            model.visual = load_visual(meta["visual"], root, device)
        bank = SentenceBank.load(root / "bank", encoder=model.encoder) if (root / "bank").exists() else None
        model.to(device)  # the projector was built on the CPU; load_state_dict copies values, not placement
        return model, bank


def save_visual(visual: VisualFrontEnd, out: Path) -> dict[str, Any]:
    """Store the (frozen) tower weights next to a report model; returns what :func:`load_visual` reads."""
    torch.save(visual.tower.state_dict(), out / "visual_tower.pt")
    return {"config": visual.config.to_dict(), "tower_source": visual.tower_source}


def load_visual(spec: dict[str, Any], root: Path, device: str = "cpu") -> VisualFrontEnd:
    from ctrag.config import from_dict

    visual = VisualFrontEnd(from_dict(VisualConfig, spec["config"]), device=device)
    visual.tower.load_state_dict(torch.load(root / "visual_tower.pt", map_location=device, weights_only=True))
    visual.tower_source = str(spec.get("tower_source", "untrained"))
    return visual


def _fit_tokens(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Exactly ``n`` tokens: cycle (few tokens) or average neighbours (many)."""
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.shape[0] == n:
        return tokens
    if tokens.shape[0] < n:
        return tokens[torch.arange(n) % tokens.shape[0]]
    return torch.nn.functional.adaptive_avg_pool1d(tokens.T[None], n)[0].T


def _partial_sentence(text: str) -> str:
    """The sentence being written (text after the last full stop), else the last complete one."""
    text = text.strip()
    head, _, tail = text.rpartition(".")
    if tail.strip():
        return tail.strip()
    sents = split_report(head) if head else []
    return sents[-1] if sents else ""


def _bank_hits(
    bank: ContextSource, regions: Sequence[str], q: np.ndarray, k: int, excl_c: set[str], excl_p: set[str]
) -> list[dict[str, Any]]:
    hits: list[SentenceHit] = []
    for region in regions:
        hits += bank.search(q, region, k + 8, distinct_text=False)
    best: dict[str, SentenceHit] = {}
    for h in sorted(hits, key=lambda h: -h.score):
        s = h.sentence
        if s.case_id in excl_c or s.patient_id in excl_p or s.split != "train":
            continue
        best.setdefault(s.text, h)
    return [
        {"text": h.sentence.text, "case_id": h.sentence.case_id, "region": r, "score": round(h.score, 4)}
        for h, r in ((h, next(x for x in h.sentence.regions if x in regions)) for h in list(best.values())[:k])
    ]


def _oracle_hits(
    own: Sequence[Any], regions: Sequence[str], q: np.ndarray, enc: Encoder, k: int
) -> list[dict[str, Any]]:
    cands = [s for s in own if set(s.regions) & set(regions)] or list(own)
    if not cands:
        return []
    scores = enc.encode_text([s.text for s in cands]) @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return [
        {"text": cands[i].text, "case_id": "oracle", "region": regions[0], "score": float(scores[i])} for i in order
    ]


__all__ = [
    "RAG_TOKEN",
    "REGIONS",
    "AdaRAGConfig",
    "AdaRAGModel",
    "AdaRAGReport",
    "HashingTextEncoder",
    "context_text",
    "rag_target",
]
