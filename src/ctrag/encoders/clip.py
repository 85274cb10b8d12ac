"""CLIP-style pairing of a frozen text encoder with a trainable volume tower.

The text side stays frozen (its vectors are what the case index already holds), and the volume tower learns to
land each CT next to its own report in that space: symmetric InfoNCE over a batch of (volume, report) pairs with
a learnable temperature (Radford et al. 2021, arXiv:2103.00020). Because text vectors never change, they are
computed once per corpus and cached (``ctrag.encoders.cache``).

``SharedSpaceEncoder`` is the inference object: ``encode_text`` delegates to the text encoder, ``encode_volume``
runs the tower; both return L2-normalised float32 vectors of the same dimension, so a CT can query an index of
reports and vice versa. ``save_pretrained``/``from_pretrained`` write/read a folder with the tower weights, its
architecture, the preprocessing and the text encoder's fingerprint, and refuse a text encoder whose fingerprint
differs from the one the tower was trained against.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctrag.config import from_dict
from ctrag.encoders.base import Encoder, l2_normalise
from ctrag.encoders.fingerprint import make_fingerprint
from ctrag.encoders.preprocess import (
    PreprocessConfig,
    check_encoder_preprocess,
    preprocess_from_dict,
    preprocess_to_dict,
)
from ctrag.encoders.sigvlp import TOWER_TYPE as SIGVLP_TOWER
from ctrag.encoders.sigvlp import SigVLPConfig, SigVLPOutput, SigVLPTower
from ctrag.encoders.volume import VolumeTower, VolumeTowerConfig, check_volume_batch
from ctrag.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError
from ctrag.utils.atomic import atomic_path, atomic_write_text
from ctrag.utils.checkpoints import load_checkpoint_file, load_strict

TOWER_WEIGHTS = "volume_tower.pt"
ENCODER_CONFIG = "encoder_config.json"
MAX_LOGIT_SCALE = math.log(100.0)
CNN_TOWER = "cnn"
#: Tower kinds a trained encoder folder may hold (``tower_type`` in ``encoder_config.json``; absent = cnn).
TOWER_TYPES = (CNN_TOWER, SIGVLP_TOWER)

AnyTower = VolumeTower | SigVLPTower
AnyTowerConfig = VolumeTowerConfig | SigVLPConfig


def build_tower(cfg: AnyTowerConfig) -> AnyTower:
    """The tower class that reads ``cfg`` (the config type decides)."""
    return SigVLPTower(cfg) if isinstance(cfg, SigVLPConfig) else VolumeTower(cfg)


def tower_type(cfg: AnyTowerConfig) -> str:
    return SIGVLP_TOWER if isinstance(cfg, SigVLPConfig) else CNN_TOWER


def tower_config_from_record(record: Mapping[str, Any], kind: str) -> AnyTowerConfig:
    if kind not in TOWER_TYPES:
        raise CheckpointMismatchError(f"unknown tower_type {kind!r}; known: {list(TOWER_TYPES)}")
    if kind == SIGVLP_TOWER:
        return from_dict(SigVLPConfig, dict(record))
    return from_dict(VolumeTowerConfig, dict(record))


def _check_batch(tower: AnyTower, volumes: torch.Tensor, value_range: tuple[float, float]) -> None:
    if isinstance(tower, SigVLPTower):
        tower.check_input(volumes, value_range)
    else:
        check_volume_batch(volumes, tower.cfg.in_channels, value_range)


def contrastive_loss(
    volume_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    text_ids: torch.Tensor | None = None,
    *,
    soft_targets: torch.Tensor | None = None,
    soft_weight: float = 0.0,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE between L2-normalised volume and text embeddings; returns (loss, logits).

    ``text_ids`` groups rows that count as the same caption: every pair within a group is a positive, with the
    target probability split evenly. For byte-identical captions (two augmented views of one CT) this gives the
    same value as the plain diagonal target, because their columns are identical; it matters when different
    texts must not act as negatives of each other (e.g. two phrasings of one study's report).

    ``soft_targets`` (an ``(n, n)`` symmetric affinity, e.g. :func:`soft_contrastive_targets`) is mixed into the
    one-hot target with ``soft_weight`` (PRIMA-style soft labels: a case whose findings match another's is not
    pushed away as hard as an unrelated one). ``allowed`` (bool ``(n, n)``) drops the False logits from both
    softmaxes, so those cases are neither positives nor negatives. With neither given (or ``soft_weight == 0``
    and no mask) the computation is exactly the plain one.
    """
    if volume_emb.shape != text_emb.shape or volume_emb.ndim != 2:
        raise InvalidInputError(f"contrastive_loss: shapes {tuple(volume_emb.shape)} vs {tuple(text_emb.shape)}")
    n = volume_emb.shape[0]
    if n < 2:
        raise InvalidInputError("contrastive_loss needs at least 2 pairs in a batch (1 pair has no negatives)")
    if not 0.0 <= soft_weight <= 1.0:
        raise InvalidInputError(f"contrastive_loss: soft_weight must be in [0, 1], got {soft_weight}")
    logits = logit_scale.exp() * volume_emb @ text_emb.t()
    if text_ids is None:
        target = torch.eye(n, device=logits.device, dtype=logits.dtype)
    else:
        same = (text_ids[:, None] == text_ids[None, :]).to(logits.dtype)
        target = same / same.sum(dim=1, keepdim=True)
    if (soft_targets is None or soft_weight == 0.0) and allowed is None:
        loss_v2t = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        loss_t2v = -(target.t() * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
        return 0.5 * (loss_v2t + loss_t2v), logits
    affinity = target
    if soft_targets is not None and soft_weight > 0.0:
        if soft_targets.shape != (n, n):
            raise InvalidInputError(
                f"contrastive_loss: soft_targets must be ({n}, {n}), got {tuple(soft_targets.shape)}"
            )
        soft = soft_targets.to(device=logits.device, dtype=logits.dtype)
        affinity = (1.0 - soft_weight) * target + soft_weight * _row_normalise(soft)
    keep = torch.eye(n, dtype=torch.bool, device=logits.device)
    if allowed is not None:
        if allowed.shape != (n, n):
            raise InvalidInputError(f"contrastive_loss: allowed must be ({n}, {n}), got {tuple(allowed.shape)}")
        keep = keep | allowed.to(device=logits.device, dtype=torch.bool) | (target > 0)
    else:
        keep = torch.ones_like(keep)
    return 0.5 * (_masked_ce(logits, affinity, keep) + _masked_ce(logits.t(), affinity.t(), keep.t())), logits


def _row_normalise(weights: torch.Tensor) -> torch.Tensor:
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row over its kept columns only (the target is renormalised onto them)."""
    log_prob = F.log_softmax(logits.masked_fill(~keep, float("-inf")), dim=1)
    tgt = _row_normalise(target * keep)
    return -(tgt * log_prob.masked_fill(~keep, 0.0)).sum(dim=1).mean()


def soft_contrastive_targets(labels: torch.Tensor, known: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Soft InfoNCE targets from the label Jaccard of a batch; rows sum to 1.

    ``labels`` is ``(n, L)`` binary (the 18 CT-RATE labels), ``known`` ``(n,)`` says which rows have labels at all.
    Weight of j in row i is ``jaccard(i, j) ** (1 / temperature)`` (two all-negative label sets agree fully, as in
    :func:`ctrag.data.pseudo_pairs.label_jaccard`), so a lower temperature keeps only near-identical findings; a
    case with an identical label set always weighs as much as the case itself. Rows or columns without labels get
    only the diagonal (one-hot), so an unlabelled case is never treated as similar to anything.
    """
    if labels.ndim != 2 or known.shape != (labels.shape[0],):
        raise InvalidInputError(f"soft_contrastive_targets: labels (n, L) and known (n,) required, got "
                                f"{tuple(labels.shape)} and {tuple(known.shape)}")  # fmt: skip
    if temperature <= 0:
        raise InvalidInputError(f"soft_contrastive_targets: temperature must be > 0, got {temperature}")
    pos = (labels > 0).to(torch.float64)
    inter = pos @ pos.t()
    union = pos.sum(dim=1, keepdim=True) + pos.sum(dim=1)[None, :] - inter
    jaccard = torch.where(union == 0, torch.ones_like(inter), inter / union.clamp_min(1.0))
    weights = jaccard.pow(1.0 / temperature)
    both = known.bool()[:, None] & known.bool()[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    weights = torch.where(both | eye, weights, torch.zeros_like(weights))
    weights = torch.where(eye, torch.ones_like(weights), weights)
    return _row_normalise(weights).to(torch.float32)


def metadata_allowed(values: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> torch.Tensor:
    """Bool ``(n, n)``: True where i and j may be contrasted, i.e. they agree on every key both of them carry.

    A case missing a key (or holding None) is not restricted by it: unknown metadata is no evidence of a
    difference. The diagonal is always True.
    """
    n = len(values)
    allowed = torch.ones((n, n), dtype=torch.bool)
    for key in keys:
        for i in range(n):
            vi = values[i].get(key)
            if vi is None:
                continue
            for j in range(n):
                vj = values[j].get(key)
                if vj is not None and vj != vi:
                    allowed[i, j] = False
    return allowed


class VolumeTextCLIP(nn.Module):
    """Trainable half of the pair: the volume tower plus the temperature (text embeddings come in precomputed).

    A SigVLP tower also gets the scale and bias of the chunk <-> sentence sigmoid loss (SigLIP's initial values,
    t = 10 and b = -10: with many more negative than positive pairs the bias starts every pair near "no").
    """

    def __init__(self, tower_cfg: AnyTowerConfig, init_temperature: float = 0.07) -> None:
        super().__init__()
        self.tower: AnyTower = build_tower(tower_cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        if isinstance(self.tower, SigVLPTower):
            self.chunk_logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.chunk_logit_bias = nn.Parameter(torch.tensor(-10.0))

    def forward_chunks(
        self,
        volumes: torch.Tensor,
        text_emb: torch.Tensor,
        text_ids: torch.Tensor | None = None,
        *,
        slice_mask: torch.Tensor | None = None,
        soft_targets: torch.Tensor | None = None,
        soft_weight: float = 0.0,
        allowed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, SigVLPOutput]:
        """SigVLP: like ``forward`` but also returns the tower output (chunk embeddings and masks)."""
        if not isinstance(self.tower, SigVLPTower):
            raise InvalidInputError("forward_chunks needs a SigVLP tower")
        out = self.tower.encode(volumes, slice_mask)
        vol = F.normalize(out.embedding, dim=-1)
        txt = F.normalize(text_emb.to(vol.dtype), dim=-1)
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE)
        loss, logits = contrastive_loss(
            vol, txt, scale, text_ids, soft_targets=soft_targets, soft_weight=soft_weight, allowed=allowed
        )
        return loss, logits, vol, out

    def forward(
        self,
        volumes: torch.Tensor,
        text_emb: torch.Tensor,
        text_ids: torch.Tensor | None = None,
        *,
        soft_targets: torch.Tensor | None = None,
        soft_weight: float = 0.0,
        allowed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (loss, logits, normalised volume embeddings); the keywords go to :func:`contrastive_loss`."""
        vol = F.normalize(self.tower(volumes), dim=-1)
        txt = F.normalize(text_emb.to(vol.dtype), dim=-1)
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE)
        loss, logits = contrastive_loss(
            vol, txt, scale, text_ids, soft_targets=soft_targets, soft_weight=soft_weight, allowed=allowed
        )
        return loss, logits, vol


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Content hash of tensors (names, dtypes, shapes, bytes) — identical across processes for equal weights."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TowerInfo:
    """What ``encoder_config.json`` records next to the tower weights."""

    name: str
    tower: AnyTowerConfig
    preprocess: PreprocessConfig
    text_encoder: dict[str, Any]
    extra: dict[str, Any]


class SharedSpaceEncoder(Encoder):
    """Frozen text encoder + trained volume tower; text and volume vectors share one space."""

    def __init__(
        self,
        text_encoder: Encoder,
        tower: AnyTower,
        preprocess: PreprocessConfig,
        *,
        name: str = "shared-space",
        device: str = "cpu",
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if tower.cfg.embed_dim != text_encoder.dim:
            raise CheckpointMismatchError(
                f"volume tower embeds into {tower.cfg.embed_dim} dims but text encoder {text_encoder.name} has "
                f"{text_encoder.dim}"
            )
        self.name = name
        self.text_encoder = text_encoder
        self.tower = tower.to(device).eval()
        self.preprocess = check_encoder_preprocess(preprocess, variable_depth=isinstance(tower, SigVLPTower))
        self.device = device
        self.extra = dict(extra or {})
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return self.text_encoder.dim

    @property
    def supports_volume(self) -> bool:
        return True

    @property
    def value_range(self) -> tuple[float, float]:
        lo, hi = self.preprocess.output_range
        return float(lo), float(hi)

    @property
    def text_fingerprint(self) -> str:
        """Fingerprint of the text side alone: text vectors here equal the text encoder's own."""
        return self.text_encoder.fingerprint

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            settings: dict[str, Any] = {
                "tower": self.tower.cfg.to_dict(),
                "preprocess": preprocess_to_dict(self.preprocess),
                "text_encoder": self.text_encoder.fingerprint,
            }
            if isinstance(self.tower, SigVLPTower):  # cnn fingerprints stay what they were before sigvlp existed
                settings["tower_type"] = SIGVLP_TOWER
            self._fingerprint = make_fingerprint(
                self.name, settings, {"tower": state_dict_sha256(self.tower.state_dict())}
            )
        return self._fingerprint

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        return self.text_encoder.encode_text(texts, batch_size=batch_size)

    @torch.inference_mode()
    def encode_volume(self, volumes: torch.Tensor, batch_size: int = 4) -> np.ndarray:
        _check_batch(self.tower, volumes, self.value_range)
        out = []
        for start in range(0, volumes.shape[0], batch_size):
            batch = volumes[start : start + batch_size].to(self.device, torch.float32)
            out.append(F.normalize(self.tower(batch), dim=-1).float().cpu().numpy())
        return l2_normalise(np.concatenate(out, axis=0))

    # --- persistence -----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``volume_tower.pt`` and ``encoder_config.json`` atomically (weights first, config last)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / TOWER_WEIGHTS) as tmp:
            torch.save({k: v.detach().cpu() for k, v in self.tower.state_dict().items()}, tmp)
        record = {
            "format": "ctrag-shared-space-encoder/1",
            "name": self.name,
            "tower_type": tower_type(self.tower.cfg),
            "tower": self.tower.cfg.to_dict(),
            "preprocess": preprocess_to_dict(self.preprocess),
            "text_encoder": {
                "name": self.text_encoder.name,
                "fingerprint": self.text_encoder.fingerprint,
                **self.extra.get("text_encoder_spec", {}),
            },
            "fingerprint": self.fingerprint,
            "extra": {k: v for k, v in self.extra.items() if k != "text_encoder_spec"},
        }
        atomic_write_text(out / ENCODER_CONFIG, json.dumps(record, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike[str], text_encoder: Encoder, *, device: str = "cpu"
    ) -> SharedSpaceEncoder:
        """Load a folder written by ``save_pretrained``; the text encoder must be the one the tower was trained on."""
        info = read_tower_info(folder)
        if info.text_encoder.get("fingerprint") != text_encoder.fingerprint:
            raise CheckpointMismatchError(
                f"{folder}: tower was trained against text encoder {info.text_encoder.get('fingerprint')}, "
                f"got {text_encoder.fingerprint}"
            )
        tower = build_tower(info.tower)
        weights = Path(folder) / TOWER_WEIGHTS
        load_strict(tower, load_checkpoint_file(weights), str(weights), hint=f"Is {ENCODER_CONFIG} from the same run?")
        return cls(text_encoder, tower, info.preprocess, name=info.name, device=device, extra=info.extra)


def read_tower_info(folder: str | os.PathLike[str]) -> TowerInfo:
    """Parse ``encoder_config.json`` of a trained shared-space encoder folder."""
    root = Path(folder)
    cfg_file, weights = root / ENCODER_CONFIG, root / TOWER_WEIGHTS
    for f in (cfg_file, weights):
        if not f.is_file():
            raise WeightsNotFoundError(
                f"trained encoder folder {root} lacks {f.name} (train one with `ctrag train encoder`)"
            )
    record = json.loads(cfg_file.read_text(encoding="utf-8"))
    return TowerInfo(
        name=record.get("name", "shared-space"),
        tower=tower_config_from_record(record["tower"], str(record.get("tower_type", CNN_TOWER))),
        preprocess=preprocess_from_dict(record["preprocess"]),
        text_encoder=dict(record.get("text_encoder", {})),
        extra=dict(record.get("extra", {})),
    )
