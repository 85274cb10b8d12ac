"""DiffVP (issue 13 item 5): report generation conditioned on scan-to-normal-reference differences.

Why differences: radiologists report what deviates from normal anatomy. DiffVP (Differential Visual Prompting)
resamples target and reference features with one shared set of learnable queries (Q-Former-style cross
attention), so both land in the same fixed-budget token space where the i-th query of each is comparable; then

* global delta: a small transformer over both query sets together (no positional or type embeddings, so the
  two halves are treated alike) and the difference of its target-half and reference-half outputs — zero when the
  target equals the reference;
* local delta: per aligned query pair the residual ``t_i - r_i`` weighted by its squared distance normalised
  over the queries, ``w_i = d_i / sum_j d_j`` — large where the deviation concentrates, zero when equal;
* difference-to-prompt: concatenation of both, an MLP, ``prefix_tokens`` (default 16) prefix embeddings; the
  target's own query tokens follow (the paper keeps the original tokens), then the diagnostic anchor text (the
  18-label prediction of a small head on the target tokens, as named concepts, :mod:`ctrag.reporting.concepts`),
  then ``Report:``.

Visual tokens: the global tokens and the 10 region texture vectors of :class:`~ctrag.reporting.visual.
VisualFrontEnd`. The paper's diagnostic classifier is a separate 3D ResNet-18; here the anchor head is trained
jointly (BCE on the case labels) — a deviation, documented.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ctrag.errors import CheckpointMismatchError, ConfigError, WeightsNotFoundError
from ctrag.reporting.concepts import ConceptConfig, concept_prompt
from ctrag.reporting.lm import Piece, ReportLM
from ctrag.reporting.normal_reference import Pairing
from ctrag.reporting.sentences import split_report
from ctrag.reporting.visual import VisualFeatures, VisualFrontEnd

MODEL_META = "diffvp.json"
N_LABELS = 18


@dataclass(frozen=True)
class DiffVPConfig:
    queries: int = 16
    dim: int = 64
    heads: int = 4
    layers: int = 1
    prefix_tokens: int = 16
    anchor: ConceptConfig = field(default_factory=ConceptConfig)
    pairing: str = "random"
    max_new_tokens: int = 160

    def __post_init__(self) -> None:
        if min(self.queries, self.dim, self.heads, self.layers, self.prefix_tokens) < 1 or self.dim % self.heads:
            raise ConfigError("DiffVPConfig: sizes must be >= 1 and dim divisible by heads")
        if self.pairing not in ("random", "nearest"):
            raise ConfigError("DiffVPConfig: pairing is random or nearest")


Tokens = tuple[torch.Tensor, torch.Tensor]


def visual_tokens(f: VisualFeatures) -> Tokens:
    """(global tokens (G, C), region texture (R, 2C)) as float tensors."""
    return f.global_tokens.float().clone(), f.texture.float().clone()  # out of inference mode, for autograd


class DifferenceExtractor(nn.Module):
    """Shared queries -> target/reference tokens -> (global delta, local delta, target queries)."""

    def __init__(self, token_dim: int, feature_dim: int, cfg: DiffVPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_global = nn.Linear(token_dim, cfg.dim)
        self.in_texture = nn.Linear(feature_dim, cfg.dim)
        self.queries = nn.Parameter(torch.randn(cfg.queries, cfg.dim) * 0.02)
        self.attn = nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
        self.norm = nn.LayerNorm(cfg.dim)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 2 * cfg.dim, dropout=0.0, batch_first=True)
        self.delta = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

    def resample(self, global_tokens: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
        # Visual features come from the front end on the CPU in fp32; the queries may sit on a GPU.
        global_tokens = global_tokens.to(self.queries.device, torch.float32)
        texture = texture.to(self.queries.device, torch.float32)
        kv = torch.cat((self.in_global(global_tokens), self.in_texture(texture)), dim=0)[None]
        out, _ = self.attn(self.queries[None], kv, kv)
        return self.norm(out[0] + self.queries)

    def forward(
        self, target: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = self.resample(*target)
        r = self.resample(*reference)
        both = self.delta(torch.cat((t, r), dim=0)[None])[0]
        n = t.shape[0]
        global_delta = both[:n] - both[n:]
        local_delta = local_difference(t, r)
        return global_delta, local_delta, t


def local_difference(t: torch.Tensor, r: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Residuals ``t_i - r_i`` weighted by ``d_i / sum d`` with ``d_i = ||t_i - r_i||^2`` (zero when equal)."""
    res = t - r
    d = (res * res).sum(dim=-1)
    w = d / (d.sum() + eps)
    return w[:, None] * res


class DiffVPModel(nn.Module):
    def __init__(self, lm: ReportLM, visual: VisualFrontEnd, config: DiffVPConfig | None = None) -> None:
        super().__init__()
        self.cfg = config or DiffVPConfig()
        self.lm = lm
        self.visual = visual
        c = self.cfg
        self.extractor = DifferenceExtractor(visual.token_dim, visual.feature_dim, c)
        h = lm.hidden_size
        self.to_prefix = nn.Sequential(nn.Linear(2 * c.dim, h), nn.GELU(), nn.Linear(h, h))
        self.target_proj = nn.Linear(c.dim, h)
        self.anchor_head = nn.Linear(c.dim, N_LABELS)

    def pieces(
        self, target: Tokens, reference: Tokens, *, anchor_probs: np.ndarray | None = None
    ) -> tuple[list[Piece], torch.Tensor]:
        """LM prompt pieces and the anchor logits (18) of the target."""
        g, loc, t = self.extractor(target, reference)
        fused = self.to_prefix(torch.cat((g, loc), dim=-1))  # (queries, h)
        prefix = _resize(fused, self.cfg.prefix_tokens)
        logits = self.anchor_head(t.mean(dim=0))
        probs = torch.sigmoid(logits.float()).detach().cpu().numpy() if anchor_probs is None else anchor_probs
        anchor = concept_prompt(probs, self.cfg.anchor)
        return ["Difference: ", prefix, " Image: ", self.target_proj(t), " " + anchor + "Report:"], logits

    def loss(
        self,
        batch: Sequence[tuple[Tokens, Tokens, str, Sequence[int] | None]],
        anchor_weight: float = 0.5,
    ) -> torch.Tensor:
        prompts, targets, bce = [], [], []
        for tgt, ref, text, labels in batch:
            anchor = None if labels is None else np.asarray(labels, dtype=np.float64)  # teacher forcing
            pcs, logits = self.pieces(tgt, ref, anchor_probs=anchor)
            prompts.append(pcs)
            targets.append(text)
            if labels is not None:
                y = torch.as_tensor(list(labels), dtype=torch.float32, device=logits.device)
                bce.append(nn.functional.binary_cross_entropy_with_logits(logits.float(), y))
        loss = self.lm.loss(prompts, targets)
        if bce:
            loss = loss + anchor_weight * torch.stack(bce).mean()
        return loss

    @torch.no_grad()
    def report(self, target: Tokens, reference: Tokens) -> dict[str, Any]:
        was = self.training
        self.eval()
        try:
            pcs, logits = self.pieces(target, reference)
            text = self.lm.generate(pcs, max_new_tokens=self.cfg.max_new_tokens)
        finally:
            self.train(was)
        return {
            "method": "diffvp",
            "report": text,
            "sentences": [{"text": s} for s in split_report(text)],
            "anchor": pcs[-1],
            "anchor_probabilities": [round(float(p), 4) for p in torch.sigmoid(logits.float()).tolist()],
        }

    def save(
        self, folder: str | os.PathLike[str], references: Sequence[tuple[str, VisualFeatures]], info: dict[str, Any]
    ) -> Path:
        """``lm/``, ``heads.pt``, the frozen tower, the reference pool's features (``references.pt``), json last."""
        from ctrag.reporting.adarag import save_visual
        from ctrag.utils.atomic import atomic_write_text

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(out / "lm")
        heads = {k: v for k, v in self.state_dict().items() if not k.startswith(("lm.", "visual."))}
        torch.save(heads, out / "heads.pt")
        torch.save(
            {
                "case_ids": [cid for cid, _ in references],
                "global_tokens": torch.stack([f.global_tokens.float() for _, f in references]),
                "texture": torch.stack([f.texture.float() for _, f in references]),
                "global_vector": torch.stack([f.global_vector.float() for _, f in references]),
            },
            out / "references.pt",
        )
        meta = {
            "method": "diffvp",
            "config": asdict(self.cfg),
            "visual": save_visual(self.visual, out),
            "references": info,
        }
        atomic_write_text(out / MODEL_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str = "cpu") -> tuple[DiffVPModel, dict[str, Any]]:
        from ctrag.reporting.adarag import load_visual

        root = Path(folder)
        if not (root / MODEL_META).is_file():
            raise WeightsNotFoundError(f"{root} is not a DiffVP model folder (no {MODEL_META})")
        meta = json.loads((root / MODEL_META).read_text("utf-8"))
        c = dict(meta["config"])
        c["anchor"] = ConceptConfig(**c.get("anchor", {}))
        lm = ReportLM.from_pretrained(root / "lm", device=device)
        model = cls(lm, load_visual(meta["visual"], root, device), DiffVPConfig(**c))
        missing, unexpected = model.load_state_dict(
            torch.load(root / "heads.pt", map_location=device, weights_only=True), strict=False
        )
        bad = [k for k in missing if not k.startswith(("lm.", "visual."))] + list(unexpected)
        if bad:
            raise CheckpointMismatchError(f"{root / 'heads.pt'}: missing/unexpected weights {bad[:5]}")
        refs = torch.load(root / "references.pt", map_location=device, weights_only=True)
        model.to(device)  # the heads were built on the CPU; load_state_dict copies values, not placement
        return model, {**dict(meta["references"]), **refs}


def pick_stored_reference(
    refs: dict[str, Any], target: VisualFeatures, pairing: Pairing, rng: random.Random
) -> tuple[int, Tokens]:
    """A reference from a saved pool for a new CT: uniform (random) or max cosine of global vectors (nearest)."""
    n = len(refs["case_ids"])
    if pairing == "random":
        i = rng.randrange(n)
    else:
        v = refs["global_vector"]
        q = target.global_vector.float().to(v.device)
        sims = (v @ q) / (v.norm(dim=1) * q.norm() + 1e-12)
        i = int(torch.argmax(sims))
    return i, (refs["global_tokens"][i], refs["texture"][i])


def _resize(tokens: torch.Tensor, n: int) -> torch.Tensor:
    if tokens.shape[0] == n:
        return tokens
    return torch.nn.functional.interpolate(tokens.T[None], size=n, mode="linear", align_corners=False)[0].T


def choose_pairing(name: str) -> Pairing:
    if name not in ("random", "nearest"):
        raise ConfigError(f"pairing must be random or nearest, got {name!r}")
    return "random" if name == "random" else "nearest"


__all__ = ["DiffVPConfig", "DiffVPModel", "DifferenceExtractor", "local_difference", "pick_stored_reference"]
