"""Clinical-consistency classifier: a CT-Net-like 3-D CNN for the 18 CT-RATE abnormalities.

RAG-Text2CT (sec. 3) judges whether a generated CT shows what its report says with CT-Net (Draelos et al.,
2021), a classifier trained on real CTs and frozen at evaluation. CT-Net's shape is kept here at a configurable
size: a 2-D ResNet trunk runs on every triplet of adjacent axial slices (the triplet plays the role of RGB), the
stack of per-triplet feature maps is reduced by 3-D convolutions, and a linear layer gives one logit per label.
The trunk and the reduction head double as the project's own slice and volume feature extractors for FID
(``ctnet-slice`` / ``ctnet-volume`` in :mod:`ctrag.evaluation.features`).

Inputs are prepared by :func:`ctrag.evaluation.volumes.prepare_volume` (RAS, HU window → [0, 1], fixed shape);
the window and shape live in :class:`ClassifierConfig` and are saved with the weights, so training and
evaluation cannot drift apart.

Labels: no shipped CT carries CT-RATE labels. Training records where its labels came from (``label_source``
per case, e.g. ``annotation-derived`` for a Lung-PET-CT-Dx tumour box) in ``classifier.json``; evaluation
tables repeat it, and never show AUCs computed from invented labels.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctrag.config import config_to_dict, from_dict
from ctrag.data.heldout import HeldOut
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.nifti import Volume
from ctrag.data.transforms import PreprocessConfig
from ctrag.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError
from ctrag.evaluation.volumes import prepare_volume
from ctrag.utils.atomic import atomic_path, atomic_write_text
from ctrag.utils.checkpoints import load_checkpoint_file, load_strict
from ctrag.utils.hashing import sha256_file
from ctrag.utils.progress import ProgressFn

#: Stage label of :func:`train_classifier` progress (one step per epoch).
TRAIN_STAGE = "epochs"

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "classifier.pt"
CONFIG_NAME = "classifier.json"


@dataclass
class ClassifierConfig:
    """Architecture, preprocessing and training settings (section ``classifier`` of a preset)."""

    input_shape: tuple[int, int, int] = (64, 64, 48)
    trunk_channels: tuple[int, int, int, int] = (16, 32, 64, 128)
    trunk_layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    reducer_channels: tuple[int, int] = (64, 32)
    dropout: float = 0.2
    num_labels: int = len(CT_RATE_LABELS)
    epochs: int = 30
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if any(s < 8 for s in self.input_shape):
            raise ValueError(f"ClassifierConfig: input_shape must be >= 8 per axis, got {self.input_shape}")
        if self.num_labels < 1 or self.epochs < 0 or self.batch_size < 1:
            raise ValueError("ClassifierConfig: num_labels and batch_size must be >= 1, epochs >= 0")


class _SliceEncoder(nn.Module):
    """(N, 1, H, W) single slices → (N, C): the trunk sees the slice repeated as a triplet."""

    def __init__(self, net: CTNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.trunk_maps(x.repeat(1, 3, 1, 1)).mean(dim=(2, 3))


class _VolumeEncoder(nn.Module):
    def __init__(self, net: CTNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.volume_features(x)


class CTNet(nn.Module):
    """CT-Net-shaped multi-label classifier on ``(B, 1, I, J, K)`` volumes (K = axial/superior axis)."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        from ctrag.evaluation.features import resnet2d_torchvision_layout

        self.cfg = cfg
        self.trunk = resnet2d_torchvision_layout("basic", cfg.trunk_layers, cfg.trunk_channels)
        c_trunk = cfg.trunk_channels[-1]
        r1, r2 = cfg.reducer_channels
        self.reducer = nn.Sequential(
            nn.Conv3d(c_trunk, r1, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(r1, r2, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool3d(1),
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(r2, cfg.num_labels)

    @property
    def slice_dim(self) -> int:
        return int(self.cfg.trunk_channels[-1])

    @property
    def volume_dim(self) -> int:
        return int(self.cfg.reducer_channels[-1])

    def trunk_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → trunk feature maps (N, C, h, w)."""
        t = self.trunk
        x = t.act(t.bn1(t.conv1(x)))
        if not t.no_max_pool:
            x = t.maxpool(x)
        return t.layer4(t.layer3(t.layer2(t.layer1(x))))

    def volume_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, I, J, K) → (B, volume_dim): per-triplet trunk maps, stacked along K, reduced in 3-D."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"CTNet: expected (B, 1, I, J, K), got {tuple(x.shape)}")
        b, _, i, j, k = x.shape
        pad = (-k) % 3
        if pad:
            x = F.pad(x, (0, pad), mode="replicate")
            k += pad
        triplets = x[:, 0].permute(0, 3, 1, 2).reshape(b * (k // 3), 3, i, j)
        maps = self.trunk_maps(triplets)
        _, c, h, w = maps.shape
        stacked = maps.reshape(b, k // 3, c, h, w).permute(0, 2, 1, 3, 4)
        return self.reducer(stacked).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.volume_features(x)))

    def slice_encoder(self) -> nn.Module:
        return _SliceEncoder(self)

    def volume_encoder(self) -> nn.Module:
        return _VolumeEncoder(self)


@dataclass
class ClinicalClassifier:
    """A trained :class:`CTNet` with its config and provenance; frozen (eval mode) for evaluation."""

    model: CTNet
    config: ClassifierConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    space: PreprocessConfig = field(default_factory=PreprocessConfig)
    """The image space (field of view, HU window) the classifier was trained in; its inputs are cut from it."""

    def prepare(self, volume: Volume) -> np.ndarray:
        return prepare_volume(volume, self.config.input_shape, space=self.space)

    def predict_proba(self, volumes: Sequence[Volume | np.ndarray], batch_size: int = 2) -> np.ndarray:
        """(N, num_labels) probabilities. Arrays are taken as already prepared (see :meth:`prepare`)."""
        arrays = [v if isinstance(v, np.ndarray) else self.prepare(v) for v in volumes]
        for a in arrays:
            if tuple(a.shape) != tuple(self.config.input_shape):
                raise InvalidInputError(
                    f"classifier expects prepared volumes of shape {self.config.input_shape}, got {a.shape}"
                )
        device = next(self.model.parameters()).device
        self.model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(arrays), batch_size):
                x = torch.from_numpy(np.stack(arrays[start : start + batch_size]))[:, None].to(device)
                out.append(torch.sigmoid(self.model(x)).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.config.num_labels))

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``classifier.pt`` (state dict) and ``classifier.json`` (config + provenance) atomically."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / WEIGHTS_NAME, suffix=".pt") as tmp:
            torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, tmp)
        self.fingerprint = sha256_file(out / WEIGHTS_NAME)
        record = {
            "format": "ctrag-ctnet-classifier/1",
            "labels": list(CT_RATE_LABELS[: self.config.num_labels]),
            "config": config_to_dict(self.config),
            "image_space": config_to_dict(self.space),
            "metadata": self.metadata,
            "weights_sha256": self.fingerprint,
        }
        atomic_write_text(out / CONFIG_NAME, json.dumps(record, indent=2))
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> ClinicalClassifier:
        root = Path(folder)
        cfg_file, weights = root / CONFIG_NAME, root / WEIGHTS_NAME
        if not cfg_file.is_file() or not weights.is_file():
            raise WeightsNotFoundError(
                f"no classifier at {root}: expected {CONFIG_NAME} and {WEIGHTS_NAME} (run `ctrag train classifier`)"
            )
        record = json.loads(cfg_file.read_text(encoding="utf-8"))
        config = dict(record["config"])
        config.pop("hu_window", None)  # classifiers written before the image space was recorded
        cfg = from_dict(ClassifierConfig, config)
        space = from_dict(PreprocessConfig, record["image_space"]) if "image_space" in record else PreprocessConfig()
        digest = sha256_file(weights)
        if record.get("weights_sha256") and record["weights_sha256"] != digest:
            raise CheckpointMismatchError(f"{weights}: sha256 {digest[:12]} differs from {CONFIG_NAME}")
        model = CTNet(cfg)
        load_strict(model, load_checkpoint_file(weights), str(weights), hint=f"Is {cfg_file.name} from the same run?")
        model.to(torch.device(device)).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        meta = dict(record.get("metadata", {}))
        return cls(model=model, config=cfg, metadata=meta, fingerprint=digest, space=space)


def train_classifier(
    volumes: Sequence[np.ndarray],
    labels: np.ndarray,
    config: ClassifierConfig,
    *,
    metadata: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    space: PreprocessConfig | None = None,
) -> ClinicalClassifier:
    """Train :class:`CTNet` on prepared volumes and a ``(N, num_labels)`` 0/1 matrix; returns it frozen.

    Loss: BCE with per-label positive weights (negatives/positives, clipped to [1, 20]) because abnormalities are
    rare. Augmentation (from ``torch.Generator(config.seed)``): random translations of up to 1/8 of each axis
    and intensity jitter, kept mild because the evaluation set is small. ``progress("epochs", epoch, epochs)`` is
    called after every epoch; the per-epoch mean losses land in ``metadata["train_losses"]``.
    """
    y = np.asarray(labels, dtype=np.float32)
    if y.ndim != 2 or y.shape[1] != config.num_labels:
        raise InvalidInputError(f"labels must be (N, {config.num_labels}), got {y.shape}")
    if len(volumes) != y.shape[0] or len(volumes) == 0:
        raise InvalidInputError(f"need one label row per volume and at least one volume ({len(volumes)} vs {len(y)})")
    if not np.isin(y, (0.0, 1.0)).all():
        raise InvalidInputError("labels must be 0/1")
    x_all = np.stack([np.asarray(v, dtype=np.float32) for v in volumes])
    if tuple(x_all.shape[1:]) != tuple(config.input_shape):
        raise InvalidInputError(f"volumes must be prepared to {config.input_shape}, got {x_all.shape[1:]}")
    device = torch.device(config.device)
    gen = torch.Generator().manual_seed(config.seed)
    model = _seeded_ctnet(config).to(device)
    pos = y.sum(0)
    pos_weight = torch.tensor(np.clip((len(y) - pos) / np.maximum(pos, 1.0), 1.0, 20.0), dtype=torch.float32)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x_t, y_t = torch.from_numpy(x_all)[:, None], torch.from_numpy(y)
    model.train()
    last = float("nan")
    history: list[float] = []
    # Dropout draws from the global RNG: fork it, seeded, so training is reproducible and the caller's RNG intact.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for epoch in range(config.epochs):
            order = torch.randperm(len(y_t), generator=gen)
            losses = []
            for start in range(0, len(order), config.batch_size):
                idx = order[start : start + config.batch_size]
                xb = _augment(x_t[idx], gen).to(device)
                loss = loss_fn(model(xb), y_t[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            last = float(np.mean(losses))
            history.append(last)
            if progress is not None:
                progress(TRAIN_STAGE, epoch + 1, config.epochs)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    meta = dict(metadata or {})
    meta.setdefault("n_train", len(y))
    meta["final_train_loss"] = last
    meta["train_losses"] = history
    return ClinicalClassifier(model=model, config=config, metadata=meta, space=space or PreprocessConfig())


def _seeded_ctnet(config: ClassifierConfig) -> CTNet:
    """Build CTNet with weights drawn from ``config.seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return CTNet(config)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    shifts = [int(torch.randint(-(s // 8), s // 8 + 1, (1,), generator=gen)) for s in x.shape[2:]]
    x = torch.roll(x, shifts=shifts, dims=(2, 3, 4))
    scale = 1.0 + 0.1 * (torch.rand((x.shape[0], 1, 1, 1, 1), generator=gen) - 0.5)
    shift = 0.05 * (torch.rand((x.shape[0], 1, 1, 1, 1), generator=gen) - 0.5)
    return (x * scale + shift).clamp(0.0, 1.0)


def read_label_table(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, str]]:
    """``case_id`` → (18 labels, label_source) from a CSV with ``case_id``, the 18 CT-RATE label columns and an
    optional ``label_source`` column (default ``"label-file"``). Lets a user attach labels, e.g. annotation-derived
    ones, to CTs whose manifest has none, while recording where they came from."""
    from ctrag.data.readers import index_unique, read_csv_lines

    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"label file not found: {file}")
    lines = read_csv_lines(file, required=("case_id", *CT_RATE_LABELS))  # strict UTF-8, columns checked
    rows = index_unique(lines, "case_id", file)  # two label rows for one CT: refused, naming both lines
    line_of = {row["case_id"].strip(): n for n, row in lines}
    out: dict[str, tuple[np.ndarray, str]] = {}
    for case_id, row in rows.items():
        n = line_of[case_id]
        try:
            vec = np.array([int(row[c]) for c in CT_RATE_LABELS], dtype=np.float32)
        except ValueError as exc:
            raise InvalidInputError(f"{file}:{n}: labels must be 0/1 ({exc})") from exc
        if not np.isin(vec, (0.0, 1.0)).all():
            raise InvalidInputError(f"{file}:{n}: labels must be 0/1")
        out[case_id] = (vec, row.get("label_source") or "label-file")
    return out


def train_from_corpus(
    corpus: Sequence[Any],
    config: ClassifierConfig,
    *,
    split: str = "train",
    label_file: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    held_out: HeldOut | None = None,
    space: PreprocessConfig | None = None,
) -> ClinicalClassifier:
    """Train on the ``split`` cases that have a CT and labels (manifest labels, or ``label_file`` rows).

    Refuses to train without any labelled CT, and records every training case and its label source. Refuses
    (``LeakageError``) any split or case the evaluation run evaluates: ``held_out`` is the preset's held-out set
    (``ctrag.data.heldout.held_out_set``); by default the test split. ``space`` is the preset's image space
    (``preprocess`` section; Text2CT's by default): training and evaluation inputs are cut from it alike.
    """
    from ctrag.data.nifti import load_volume

    guard = held_out if held_out is not None else HeldOut()
    guard.check_splits([split], "the clinical classifier")

    extra = read_label_table(label_file) if label_file is not None else {}
    chosen: list[tuple[Any, np.ndarray, str]] = []
    for case in corpus:
        if case.split != split or not case.has_volume:
            continue
        if case.case_id in extra:
            vec, source = extra[case.case_id]
        elif case.labels is not None:
            vec = np.asarray(case.labels, dtype=np.float32)
            source = str(case.extra.get("label_source") or f"manifest ({case.report_source} report)")
        else:
            continue
        chosen.append((case, vec, source))
    unknown = sorted(set(extra) - {c.case_id for c in corpus})
    if unknown:
        raise InvalidInputError(f"label file names cases not in the corpus: {unknown[:5]}")
    guard.check_cases([c for c, _, _ in chosen], "the clinical classifier")
    if not chosen:
        raise InvalidInputError(
            f"no {split!r} case has both a CT volume and CT-RATE labels, so there is nothing to train the classifier "
            "on; give labels with --labels FILE (case_id + the 18 label columns + label_source)"
        )
    space = space or PreprocessConfig()
    arrays = [prepare_volume(load_volume(c.volume_path), config.input_shape, space=space) for c, _, _ in chosen]
    labels = np.stack([v for _, v, _ in chosen])
    meta = {
        "split": split,
        "n_train": len(chosen),
        "cases": [{"case_id": c.case_id, "label_source": s} for c, _, s in chosen],
        "label_sources": sorted({s for _, _, s in chosen}),
        "positives_per_label": {n: int(p) for n, p in zip(CT_RATE_LABELS, labels.sum(0), strict=True) if p > 0},
    }
    return train_classifier(arrays, labels, config, metadata=meta, progress=progress, space=space)
