"""Reg2RG: region-guided CT report generation (Chen et al., IEEE TMI 2025, doi:10.1109/TMI.2025.3559923).

What is taken from the paper (``reg2rg-report-generation.txt``):

* **Decoupled local features.** Each region enters the LM as two tokens, texture (the region's masked crop through
  the volume encoder) and geometry (the uncropped region mask through a small encoder), both projected to the LM
  width; :mod:`ctrag.reporting.visual` computes their inputs.
* **Global-local collaboration.** A global token (whole-volume features) and ``global_grid`` global tokens sit in
  the same structured prompt, so a region paragraph can use context from the rest of the CT.
* **Structured prompt.** ``Global: <g>...<g>. Region 1: <tex><geo>. Region 2: <tex><geo>. ...``; the angle-bracket
  slots are embedding pieces (:class:`ctrag.reporting.lm.ReportLM` places them, no vocabulary change).
* **Region-report alignment training.** Each target paragraph is prefixed with the region it describes
  (``Region 3 corresponds to the heart. <paragraph>``) and the order of the region slots is **shuffled at every
  step**, so the LM has to recognise a region from its features, not from its position.
* **Output.** One paragraph per requested region, assembled into findings (in :data:`REGIONS` order, exact duplicate
  sentences dropped) plus an impression generated from the same prompt.

Where this differs, and why: the paper decodes all region paragraphs in one pass; here each requested region is
decoded on its own (prompt + ``Region i corresponds to the <name>.``), which guarantees exactly one paragraph per
requested region and lets the reporter also record which region the LM *recognises* at slot ``i`` (greedy
continuation of ``Region i corresponds to the``; Reg2RG's region-recognition accuracy). The LM is the CPU default
of :mod:`ctrag.reporting.lm` unless a local HF model is given; the paper uses LLaMA2-7B with LoRA.

Region paragraphs of a reference report come from :func:`ctrag.reporting.sentences.tag_report` (a sentence tagged
with several regions belongs to each of their paragraphs).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctrag.data.nifti import Volume
from ctrag.errors import CheckpointMismatchError, ConfigError, InvalidInputError, WeightsNotFoundError
from ctrag.reporting.lm import Piece, PrefixProjector, ReportLM
from ctrag.reporting.sentences import REGIONS, split_report, tag_report
from ctrag.reporting.visual import GeometryEncoder, VisualConfig, VisualFeatures, VisualFrontEnd
from ctrag.utils.hashing import sha256_file, sha256_json

logger = logging.getLogger(__name__)

REG2RG_FORMAT = "ctrag-reg2rg/1"
REG2RG_META = "reg2rg.json"
IMPRESSION_CUE = "Impression:"


@dataclass
class Reg2RGConfig:
    """Model and decoding settings (``reporting.reg2rg:`` section of a preset)."""

    regions: tuple[str, ...] = REGIONS
    geometry_dim: int = 64
    global_tokens: bool = True
    max_paragraph_tokens: int = 96
    max_impression_tokens: int = 64
    num_beams: int = 1
    no_repeat_ngram_size: int = 4
    impression: bool = True

    def __post_init__(self) -> None:
        self.regions = tuple(self.regions)
        bad = [r for r in self.regions if r not in REGIONS]
        if bad or not self.regions or len(set(self.regions)) != len(self.regions):
            raise ConfigError(
                f"Reg2RGConfig: regions must be distinct names out of {list(REGIONS)}, got {self.regions}"
            )
        for name in ("geometry_dim", "max_paragraph_tokens", "max_impression_tokens", "num_beams"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"Reg2RGConfig: {name} must be >= 1")


def region_paragraphs(findings: str, impression: str = "") -> dict[str, str]:
    """Reference report -> region -> paragraph (the findings sentences tagged with that region, in order)."""
    out: dict[str, list[str]] = {}
    for s in tag_report(findings, impression):
        if s.section == "impression":
            continue
        for r in s.regions:
            out.setdefault(r, []).append(s.text)
    return {r: " ".join(v) for r, v in out.items()}


def region_prefix(slot: int, region: str) -> str:
    """The alignment prefix of the paper ("Region i corresponds to the heart")."""
    return f"Region {slot} corresponds to the {region}."


@dataclass
class Reg2RGSample:
    """One training target: a region paragraph (``region`` set) or the impression (``region`` None)."""

    region: str | None
    text: str


class Reg2RGModel(nn.Module):
    """Trainable heads (texture, geometry, global projections + geometry encoder) around a report LM."""

    def __init__(self, lm: ReportLM, visual: VisualFrontEnd, config: Reg2RGConfig | None = None) -> None:
        super().__init__()
        self.config = config or Reg2RGConfig()
        missing = [r for r in self.config.regions if r not in visual.config.regions]
        if missing:
            raise ConfigError(f"Reg2RG regions {missing} are not extracted by the visual front end")
        self.lm = lm
        self.visual = visual
        h = lm.hidden_size
        self.texture_proj = PrefixProjector(visual.feature_dim, h)
        self.geometry_encoder = GeometryEncoder(self.config.geometry_dim)
        self.geometry_proj = PrefixProjector(self.config.geometry_dim, h)
        self.global_proj = PrefixProjector(visual.feature_dim, h)
        self.global_token_proj = PrefixProjector(visual.token_dim, h)

    def heads(self) -> dict[str, nn.Module]:
        return {
            "texture_proj": self.texture_proj,
            "geometry_encoder": self.geometry_encoder,
            "geometry_proj": self.geometry_proj,
            "global_proj": self.global_proj,
            "global_token_proj": self.global_token_proj,
        }

    # ---------------------------------------------------------------- prompt
    def prompt(self, feats: VisualFeatures, order: Sequence[str]) -> list[Piece]:
        """The structured prompt with region slots in ``order`` (slot i = ``order[i - 1]``)."""
        dev = self.lm.device
        g = self.global_proj(feats.global_vector.to(dev)[None])
        pieces: list[Piece] = ["Global:", g]
        if self.config.global_tokens:
            pieces.append(self.global_token_proj(feats.global_tokens.to(dev)))
        pos = [feats.regions.index(r) for r in order]
        idx = torch.as_tensor(pos, dtype=torch.long)
        tex = self.texture_proj(feats.texture[idx].to(dev))
        geo = self.geometry_proj(self.geometry_encoder(feats.geometry[idx].to(dev)))
        for slot in range(len(order)):
            pieces += [f". Region {slot + 1}:", torch.stack((tex[slot], geo[slot]))]
        pieces.append(".\n")
        return pieces

    def loss(self, batch: Sequence[tuple[VisualFeatures, Sequence[Reg2RGSample]]], rng: random.Random) -> torch.Tensor:
        """Region-report alignment loss: per case one shuffled slot order, one LM target per sample."""
        prompts: list[list[Piece]] = []
        targets: list[str] = []
        for feats, samples in batch:
            order = list(self.config.regions)
            rng.shuffle(order)
            base = self.prompt(feats, order)
            for s in samples:
                if s.region is None:
                    prompts.append([*base, IMPRESSION_CUE])
                    targets.append(" " + s.text)
                else:
                    slot = order.index(s.region) + 1
                    prompts.append([*base, f"Region {slot} corresponds to the"])
                    targets.append(f" {s.region}. {s.text}")
        if not prompts:
            raise InvalidInputError("no training targets in this batch (no region paragraphs, no impression)")
        return self.lm.loss(prompts, targets)


def training_samples(findings: str, impression: str, regions: Sequence[str]) -> list[Reg2RGSample]:
    """Targets of one report: each region of ``regions`` that the report describes, and its impression."""
    paragraphs = region_paragraphs(findings, impression)
    out = [Reg2RGSample(r, paragraphs[r]) for r in regions if paragraphs.get(r)]
    if impression.strip():
        out.append(Reg2RGSample(None, " ".join(split_report(impression)) or impression.strip()))
    return out


# --------------------------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RegionParagraph:
    region: str
    slot: int
    text: str
    present: bool  # the region had voxels in the mask
    recognised: str | None  # the LM's own reading of the slot ("Region i corresponds to the ...")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Reg2RGReport:
    """A region-guided report with what it was made from."""

    paragraphs: list[RegionParagraph]
    impression: str
    visual: dict[str, Any]
    model: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def findings(self) -> str:
        seen: set[str] = set()
        paras = []
        for p in sorted(self.paragraphs, key=lambda p: REGIONS.index(p.region)):
            kept = [s for s in split_report(p.text) if not (s in seen or seen.add(s))]  # type: ignore[func-returns-value]
            if kept:
                paras.append(" ".join(kept))
            elif p.text.strip() and not split_report(p.text):  # no sentence the splitter recognises: keep as is
                paras.append(p.text.strip())
        return "\n".join(paras)

    @property
    def text(self) -> str:
        from ctrag.reporting.sentences import assemble_report

        return assemble_report(self.findings, self.impression)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "reg2rg",
            "report": self.text,
            "findings": self.findings,
            "impression": self.impression,
            "paragraphs": [p.to_dict() for p in self.paragraphs],
            "mask_source": self.visual.get("mask_source"),
            "visual": self.visual,
            "model": self.model,
            "image_conditioned": True,
            "notes": list(self.notes),
        }


class Reg2RGReporter:
    """Inference with a trained :class:`Reg2RGModel` (``ctrag report --method reg2rg --lm DIR``)."""

    def __init__(self, model: Reg2RGModel, meta: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.meta = dict(meta or {})

    @torch.no_grad()
    def report(
        self, volume: Volume, mask: Volume | None = None, *, regions: Sequence[str] | None = None
    ) -> Reg2RGReport:
        cfg = self.model.config
        regions = tuple(regions) if regions else cfg.regions
        bad = [r for r in regions if r not in cfg.regions]
        if bad:
            raise InvalidInputError(f"regions {bad} are not regions of this model; it knows {list(cfg.regions)}")
        if len(set(regions)) != len(regions):
            raise InvalidInputError(f"regions repeat: {list(regions)}")
        feats = self.model.visual.extract(volume, mask)
        return self.report_features(feats, regions)

    @torch.no_grad()
    def report_features(self, feats: VisualFeatures, regions: Sequence[str]) -> Reg2RGReport:
        cfg = self.model.config
        lm = self.model.lm
        order = list(regions)
        base = self.model.prompt(feats, order)
        kw: dict[str, Any] = {"num_beams": cfg.num_beams, "no_repeat_ngram_size": cfg.no_repeat_ngram_size}
        paragraphs = []
        for slot, region in enumerate(order, start=1):
            seen = lm.generate([*base, f"Region {slot} corresponds to the"], max_new_tokens=6, num_beams=1)
            recognised = next((r for r in sorted(REGIONS, key=len, reverse=True) if seen.startswith(r)), None)
            text = lm.generate(
                [*base, f"Region {slot} corresponds to the {region}."], max_new_tokens=cfg.max_paragraph_tokens, **kw
            )
            present = bool(feats.present[feats.regions.index(region)])
            paragraphs.append(RegionParagraph(region, slot, text, present, recognised))
        impression = ""
        if cfg.impression:
            impression = lm.generate([*base, IMPRESSION_CUE], max_new_tokens=cfg.max_impression_tokens, **kw)
        notes = list(self.meta.get("notes", []))
        absent = [p.region for p in paragraphs if not p.present]
        if absent:
            notes.append(f"regions without voxels in the mask (written from zero features): {absent}")
        return Reg2RGReport(paragraphs, impression, feats.summary(), self.model_info(), notes)

    def model_info(self) -> dict[str, Any]:
        train = self.meta.get("training", {})
        return {
            "fingerprint": self.meta.get("fingerprint"),
            "lm_fingerprint": self.model.lm.fingerprint,
            "visual_tower": self.model.visual.tower_source,
            "training_report_sources": train.get("report_sources"),
            "training_pairs": train.get("n_pairs"),
        }

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str], *, device: str = "cpu") -> Reg2RGReporter:
        model, meta = load_reg2rg(folder, device=device)
        return cls(model, meta)


# --------------------------------------------------------------------------------------------------------------
# Persistence (safetensors + JSON, no pickle)
# --------------------------------------------------------------------------------------------------------------


def save_reg2rg(model: Reg2RGModel, folder: str | os.PathLike[str], training: dict[str, Any] | None = None) -> Path:
    """``lm/`` (ReportLM folder), ``heads.safetensors``, ``visual_tower.safetensors``, ``reg2rg.json`` (last)."""
    from safetensors.torch import save_file

    from ctrag.utils.atomic import atomic_path, atomic_write_text

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.lm.save_pretrained(out / "lm")
    heads = {
        f"{name}.{k}": v.detach().cpu().contiguous()
        for name, m in model.heads().items()
        for k, v in m.state_dict().items()
    }
    tower = {k: v.detach().cpu().contiguous() for k, v in model.visual.tower.state_dict().items()}
    for name, tensors in (("heads.safetensors", heads), ("visual_tower.safetensors", tower)):
        with atomic_path(out / name) as tmp:
            save_file(tensors, str(tmp))
    files = {n: sha256_file(out / n) for n in ("heads.safetensors", "visual_tower.safetensors")}
    meta = {
        "format": REG2RG_FORMAT,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(model.config).items()},
        "visual": model.visual.state(),
        "lm": {"folder": "lm", "fingerprint": model.lm.fingerprint},
        "files": files,
        "fingerprint": sha256_json({"files": files, "lm": model.lm.fingerprint})[:16],
        "training": dict(training or {}),
    }
    atomic_write_text(out / REG2RG_META, json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return out


def load_reg2rg(folder: str | os.PathLike[str], *, device: str = "cpu") -> tuple[Reg2RGModel, dict[str, Any]]:
    from safetensors.torch import load_file

    from ctrag.config import from_dict
    from ctrag.encoders.volume import VolumeTower, VolumeTowerConfig

    root = Path(folder)
    meta_path = root / REG2RG_META
    if not root.exists():
        raise WeightsNotFoundError(f"Reg2RG model folder {root} does not exist (train one: ctrag train reporter)")
    if not meta_path.is_file():
        raise WeightsNotFoundError(
            f"{root} is not a Reg2RG model folder (no {REG2RG_META}); `ctrag train reporter --method reg2rg --out DIR` "
            "writes one"
        )
    meta = json.loads(meta_path.read_text("utf-8"))
    if meta.get("format") != REG2RG_FORMAT:
        raise CheckpointMismatchError(f"{meta_path}: format {meta.get('format')!r}, expected {REG2RG_FORMAT!r}")
    for name, digest in meta.get("files", {}).items():
        if not (root / name).is_file() or sha256_file(root / name) != digest:
            raise CheckpointMismatchError(f"{root / name} is missing or changed since it was saved")
    vis = meta["visual"]
    tcfg = dict(vis["tower"])
    tower = VolumeTower(
        VolumeTowerConfig(**{**tcfg, "channels": tuple(tcfg["channels"]), "strides": tuple(tcfg["strides"])})
    )
    tower.load_state_dict(load_file(str(root / "visual_tower.safetensors")), strict=True)
    visual = VisualFrontEnd(
        from_dict(VisualConfig, dict(vis["config"])), tower=tower, tower_source=str(vis["tower_source"]), device=device
    )
    lm = ReportLM.from_pretrained(root / meta["lm"]["folder"], device=device)
    model = Reg2RGModel(lm, visual, from_dict(Reg2RGConfig, dict(meta["config"])))
    state = load_file(str(root / "heads.safetensors"))
    for name, module in model.heads().items():
        part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        module.load_state_dict(part, strict=True)
    return model.to(device), meta
