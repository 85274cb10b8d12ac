"""Contrastive training of the volume tower against frozen report embeddings (``ctrag train encoder``).

Recipe: every case with both a CT and a report contributes a (volume, text) pair; text vectors are computed once
with the frozen text encoder (through the on-disk embedding cache, so a resumed or repeated run does not re-embed);
volumes are preprocessed once with the project's ``PreprocessConfig`` and augmented on the fly (random crop,
random flips on the configured axes); the tower + temperature are trained with symmetric InfoNCE and AdamW.
Checkpoints are written atomically after each epoch with the config, preprocessing and text-encoder fingerprint,
and a run resumes from the last one. At the end the trained encoder is exported as a folder that
``create_encoder(<folder>)`` loads, together with a summary, a loss curve and train-set retrieval figures.

Honesty note: the shipped sample data has a handful of CTs and no CT paired with its own radiologist report, so a
run here learns annotation-derived captions of a few training CTs. It demonstrates and tests the code path; it is
not a CT-RATE-scale encoder, and its train-set retrieval says nothing about generalisation.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctrag.config import config_to_dict
from ctrag.data.case import Case
from ctrag.encoders.base import Encoder
from ctrag.encoders.cache import EmbeddingCache, encode_text_cached
from ctrag.encoders.clip import (
    AnyTowerConfig,
    SharedSpaceEncoder,
    VolumeTextCLIP,
    metadata_allowed,
    soft_contrastive_targets,
)
from ctrag.encoders.config import EncoderConfig, EncoderTrainConfig
from ctrag.encoders.factory import create_encoder, get_model_config
from ctrag.encoders.preprocess import (
    PreprocessConfig,
    check_encoder_preprocess,
    load_prepared,
    preprocess_to_dict,
    variable_depth_preprocess,
)
from ctrag.encoders.sigvlp import TOWER_TYPE as SIGVLP_TOWER
from ctrag.encoders.sigvlp import sigvlp_config_from_dict
from ctrag.encoders.volume import VolumeTowerConfig
from ctrag.errors import CheckpointMismatchError, ConfigError, InvalidInputError
from ctrag.utils.atomic import atomic_path, atomic_write_text
from ctrag.utils.checkpoints import load_checkpoint_file, load_strict
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
SUMMARY = "train_summary.json"
TEXT_CACHE = "text_embeddings.sqlite"
LOSS_FIGURE = "loss.png"


@dataclass
class TrainingPair:
    case_id: str
    text: str
    report_source: str
    volume: torch.Tensor  # (1, I, J, K) in [0, 1]


@dataclass
class TrainResult:
    out_dir: Path
    epochs_done: int
    steps_done: int
    epoch_losses: list[float]
    retrieval_before: dict[str, float] | None
    retrieval_after: dict[str, float]
    fingerprint: str
    resumed_from_epoch: int = 0
    report_sources: dict[str, int] = field(default_factory=dict)
    #: SigVLP with ``chunk_align_weight > 0``: mean chunk <-> region-sentence sigmoid loss per epoch (unweighted).
    epoch_chunk_losses: list[float] = field(default_factory=list)


def select_training_cases(corpus: Sequence[Case], split: str | None) -> list[Case]:
    """Cases of ``split`` (all splits if None/empty) that have both a volume and a report."""
    chosen = [c for c in corpus if (not split or c.split == split) and c.has_volume and c.has_report]
    if len(chosen) < 2:
        raise InvalidInputError(
            f"contrastive training needs at least 2 cases with both a CT and a report in split {split!r}; "
            f"found {len(chosen)} (of {len(corpus)} cases)"
        )
    return chosen


LOAD_STAGE = "load CTs"
TRAIN_STAGE = "train encoder"


def load_training_pairs(
    cases: Sequence[Case], preprocess: PreprocessConfig, progress: ProgressFn | None = None
) -> list[TrainingPair]:
    """Load and preprocess each case's CT once (``load_volume`` + the project's transforms);
    ``progress("load CTs", done, total)`` after each."""
    pairs = []
    for case in cases:
        assert case.volume_path is not None
        rescale = case.extra.get("rescale") if case.extra.get("rescale_applied") else None
        prepared = load_prepared(case.volume_path, preprocess, rescale=rescale)
        pairs.append(TrainingPair(case.case_id, case.report_text, case.report_source, prepared.tensor))
        if progress is not None:
            progress(LOAD_STAGE, len(pairs), len(cases))
    return pairs


@dataclass(frozen=True)
class AugmentPlan:
    """One random draw of :func:`augment`: a (start, size) window per axis (None = no crop) and the flipped axes."""

    windows: tuple[tuple[int, int], ...] | None
    flips: tuple[int, ...]


def augment_plan(shape: Sequence[int], cfg: EncoderTrainConfig, generator: torch.Generator) -> AugmentPlan:
    """Draw crop windows and flips for a ``(I, J, K)`` grid (the same draws, in the same order, as ``augment``)."""
    windows = None
    if cfg.crop_fraction < 1.0:
        drawn = []
        for n in shape:
            size = min(n, max(8, round(n * cfg.crop_fraction)))
            start = int(torch.randint(0, n - size + 1, (1,), generator=generator))
            drawn.append((start, size))
        windows = tuple(drawn)
    flips = tuple(a for a in cfg.flip_axes if float(torch.rand((), generator=generator)) < cfg.flip_prob)
    return AugmentPlan(windows, flips)


def apply_plan(tensor: torch.Tensor, plan: AugmentPlan, axes: Sequence[int] = (0, 1, 2)) -> torch.Tensor:
    """Apply ``plan`` to the trailing spatial axes of ``tensor``; ``axes`` names which of I, J, K it has.

    A per-slice table ``(R, K)`` is cropped and flipped exactly like the K axis of its CT with ``axes=(2,)``.
    """
    out = tensor
    first = tensor.ndim - len(axes)
    for dim, axis in enumerate(axes, start=first):
        if plan.windows is not None:
            start, size = plan.windows[axis]
            out = out.narrow(dim, start, size)
        if axis in plan.flips:
            out = out.flip(dim)
    return out.contiguous()


def augment(volume: torch.Tensor, cfg: EncoderTrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Random crop (``crop_fraction`` of each axis) and random flips of one ``(1, I, J, K)`` volume."""
    return apply_plan(volume, augment_plan(volume.shape[1:], cfg, generator))


def stack_depths(volumes: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``(1, I, J, K_i)`` volumes of different slice counts: zero-pad K to the longest, plus a slice mask."""
    depth = max(v.shape[-1] for v in volumes)
    batch = torch.stack([F.pad(v, (0, depth - v.shape[-1])) for v in volumes])
    mask = torch.zeros((len(volumes), depth), dtype=torch.bool)
    for i, v in enumerate(volumes):
        mask[i, : v.shape[-1]] = True
    return batch, mask


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled index batches; a trailing batch of one is merged into the previous one (it has no negatives)."""
    order = torch.randperm(n, generator=generator).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2].extend(batches.pop())
    return batches


@torch.no_grad()
def train_retrieval(
    model: VolumeTextCLIP, volumes: Sequence[torch.Tensor], text_emb: torch.Tensor, device: str
) -> dict[str, float]:
    """Volume -> caption retrieval over the training pairs (rank of each CT's own caption among all captions)."""
    was_training = model.training
    model.eval()
    vol = torch.cat([F.normalize(model.tower(v[None].to(device)), dim=-1).cpu() for v in volumes])
    if was_training:
        model.train()
    sims = vol @ F.normalize(text_emb, dim=-1).t()
    own = sims.diagonal()
    ranks = (sims > own[:, None]).sum(dim=1) + 1
    n = len(volumes)
    return {
        "n": float(n),
        "top1": float((ranks == 1).float().mean()),
        "mean_rank": float(ranks.float().mean()),
        "chance_top1": 1.0 / n,
        "chance_mean_rank": (n + 1) / 2.0,
    }


def centroid_gap_penalty(volume_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Squared norm of (CT centroid - report centroid) of one batch, both sides L2-normalised first."""
    txt = F.normalize(text_emb.to(volume_emb.dtype), dim=-1)
    return (F.normalize(volume_emb, dim=-1).mean(dim=0) - txt.mean(dim=0)).pow(2).sum()


@torch.no_grad()
def train_modality_gap(
    model: VolumeTextCLIP, volumes: Sequence[torch.Tensor], text_emb: torch.Tensor, device: str
) -> dict[str, Any]:
    """The modality-gap diagnostic of the training pairs (CT vectors vs their caption vectors)."""
    from ctrag.evaluation.modality_gap import modality_gap

    was_training = model.training
    model.eval()
    vol = torch.cat([F.normalize(model.tower(v[None].to(device)), dim=-1).cpu() for v in volumes])
    if was_training:
        model.train()
    return modality_gap(vol.numpy(), F.normalize(text_emb, dim=-1).numpy()).to_dict()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name == "logit_scale" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _volume_arch(volume_model: str) -> dict[str, Any]:
    arch = get_model_config(volume_model)
    if arch.get("type") != "shared-space":
        raise InvalidInputError(f"volume_model {volume_model!r} is a {arch.get('type')!r} encoder, not a volume tower")
    return arch


def _tower_config(volume_model: str, embed_dim: int) -> AnyTowerConfig:
    arch = _volume_arch(volume_model)
    if arch.get("tower_type") == SIGVLP_TOWER:
        return sigvlp_config_from_dict(arch["tower"], embed_dim)
    tower = dict(arch["tower"])
    tower["channels"] = tuple(tower["channels"])
    tower["strides"] = tuple(tower["strides"])
    return VolumeTowerConfig(**tower, embed_dim=embed_dim)


def train_encoder(
    corpus: Sequence[Case],
    out_dir: str | os.PathLike[str],
    cfg: EncoderConfig,
    preprocess: PreprocessConfig,
    *,
    text_encoder: Encoder | None = None,
    resume: bool = True,
    progress: ProgressFn | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train (or resume) a shared-space volume encoder; writes checkpoint, encoder folder, summary to ``out_dir``."""
    tcfg = cfg.train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    is_sigvlp = _volume_arch(cfg.volume_model).get("tower_type") == SIGVLP_TOWER
    if is_sigvlp and preprocess.resize_mode != "pad_crop_xy":
        logger.info("SigVLP keeps every slice: preprocessing resize_mode %r -> 'pad_crop_xy'", preprocess.resize_mode)
        preprocess = variable_depth_preprocess(preprocess)
    if tcfg.chunk_align_weight > 0 and not is_sigvlp:
        raise ConfigError(
            f"train.chunk_align_weight={tcfg.chunk_align_weight} needs a SigVLP volume model (chunks); "
            f"{cfg.volume_model!r} is a fixed-grid tower"
        )
    preprocess = check_encoder_preprocess(preprocess, variable_depth=is_sigvlp)
    device = tcfg.device

    # 1. data: cases with a CT and a report
    cases = select_training_cases(corpus, tcfg.split)
    sources = dict(Counter(c.report_source for c in cases))
    if sources.get("annotation-derived"):
        logger.warning(
            "%d of %d training texts are annotation-derived captions, not radiologist reports",
            sources["annotation-derived"],
            len(cases),
        )

    # 2. frozen text side, embedded once through the cache
    text_spec = {"name_or_path": cfg.text, "weights": cfg.text_weights, "long_text": cfg.long_text}
    if text_encoder is None:
        text_encoder = create_encoder(cfg.text, cfg.text_weights, device, long_text=cfg.long_text)
    with EmbeddingCache(out / TEXT_CACHE) as cache:
        text_np = encode_text_cached(text_encoder, [c.report_text for c in cases], cache, cfg.text_batch_size)
    text_emb = torch.from_numpy(text_np)
    caption_ids = torch.tensor(_caption_ids([c.report_text for c in cases]))

    labels, known = _case_labels(cases) if tcfg.soft_targets == "label_jaccard" else (None, None)
    metadata = [c.extra for c in cases]

    # 3. volumes, preprocessed once
    pairs = load_training_pairs(cases, preprocess, progress=progress)
    volumes = [p.volume for p in pairs]
    align = (
        _chunk_alignment_data(cases, volumes, preprocess, text_encoder, out, cfg)
        if tcfg.chunk_align_weight > 0
        else None
    )

    # 4. model (initialised from the seed without disturbing the caller's global RNG)
    tower_cfg = _tower_config(cfg.volume_model, text_encoder.dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tcfg.seed)
        model = VolumeTextCLIP(tower_cfg, tcfg.init_temperature).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, tcfg.weight_decay), lr=tcfg.lr)
    generator = torch.Generator().manual_seed(tcfg.seed)
    meta = {
        "format": "ctrag-encoder-checkpoint/1",
        **({"tower_type": SIGVLP_TOWER} if is_sigvlp else {}),
        "tower": tower_cfg.to_dict(),
        "volume_model": cfg.volume_model,
        "preprocess": preprocess_to_dict(preprocess),
        "text_encoder": {**text_spec, "fingerprint": text_encoder.fingerprint},
        "case_ids": [c.case_id for c in cases],
        "train": config_to_dict(tcfg),
    }

    # 5. resume
    start_epoch, step, epoch_losses, before, gap_before = 0, 0, [], None, None
    chunk_losses: list[float] = []
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        state = load_checkpoint_file(ckpt_path)
        _check_resumable(state["meta"], meta, ckpt_path)
        load_strict(model, state["model"], f"{ckpt_path} (model)")
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        epoch_losses = [float(x) for x in state["epoch_losses"]]
        chunk_losses = [float(x) for x in state.get("epoch_chunk_losses", [])]
        before = state.get("retrieval_before")
        gap_before = state.get("modality_gap_before")
        logger.info("resuming %s from epoch %d", ckpt_path, start_epoch)
    else:
        before = train_retrieval(model, volumes, text_emb, device)
        gap_before = train_modality_gap(model, volumes, text_emb, device)
    ranking_before = align.ranking(model, volumes, device) if align is not None else None

    # 6. train
    total_epochs = tcfg.epochs
    steps_per_epoch = len(_batches(len(pairs) * tcfg.views_per_case, tcfg.batch_size, torch.Generator()))
    total_steps = total_epochs * steps_per_epoch
    model.train()
    for epoch in range(start_epoch, total_epochs):
        items = [i for i in range(len(pairs)) for _ in range(tcfg.views_per_case)]
        losses, epoch_chunk = [], []
        for batch_idx in _batches(len(items), tcfg.batch_size, generator):
            idx = [items[j] for j in batch_idx]
            plans = [augment_plan(volumes[i].shape[1:], tcfg, generator) for i in idx]
            views = [apply_plan(volumes[i], plan) for i, plan in zip(idx, plans, strict=True)]
            slice_mask = None
            if is_sigvlp:
                stacked, slice_mask = stack_depths(views)
                vols, slice_mask = stacked.to(device), slice_mask.to(device)
            else:
                vols = torch.stack(views).to(device)
            batch_text = text_emb[idx].to(device)
            soft = None
            if labels is not None and known is not None:
                soft = soft_contrastive_targets(labels[idx], known[idx], tcfg.soft_target_temperature).to(device)
            allowed = None
            if tcfg.same_metadata_negatives_only:
                allowed = metadata_allowed([metadata[i] for i in idx], tcfg.same_metadata_negatives_only).to(device)
            soft_weight = tcfg.soft_target_weight if soft is not None else 0.0
            if is_sigvlp:
                loss, _, vol_emb, tower_out = model.forward_chunks(
                    vols,
                    batch_text,
                    caption_ids[idx].to(device),
                    slice_mask=slice_mask,
                    soft_targets=soft,
                    soft_weight=soft_weight,
                    allowed=allowed,
                )
                if align is not None:
                    chunk_loss = align.loss(model, tower_out, idx, plans, device)
                    loss = loss + tcfg.chunk_align_weight * chunk_loss
                    epoch_chunk.append(float(chunk_loss.detach()))
            else:
                loss, _, vol_emb = model(
                    vols,
                    batch_text,
                    caption_ids[idx].to(device),
                    soft_targets=soft,
                    soft_weight=soft_weight,
                    allowed=allowed,
                )
            if tcfg.gap_weight > 0:
                loss = loss + tcfg.gap_weight * centroid_gap_penalty(vol_emb, batch_text)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(TRAIN_STAGE, step, total_steps)
        epoch_losses.append(float(np.mean(losses)))
        if epoch_chunk:
            chunk_losses.append(float(np.mean(epoch_chunk)))
        if on_epoch is not None:
            on_epoch(epoch + 1, epoch_losses[-1])
        if (epoch + 1) % tcfg.checkpoint_every == 0 or epoch + 1 == total_epochs:
            _save_checkpoint(
                ckpt_path,
                {
                    "meta": meta,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "epoch": epoch + 1,
                    "step": step,
                    "epoch_losses": epoch_losses,
                    "epoch_chunk_losses": chunk_losses,
                    "retrieval_before": before,
                    "modality_gap_before": gap_before,
                },
            )
    model.eval()

    # 7. export + summary
    after = train_retrieval(model, volumes, text_emb, device)
    gap_after = train_modality_gap(model, volumes, text_emb, device)
    summary = {
        "epochs": len(epoch_losses),
        "steps": step,
        "epoch_losses": epoch_losses,
        "tower_type": SIGVLP_TOWER if is_sigvlp else "cnn",
        "chunk_align_weight": tcfg.chunk_align_weight,
        "epoch_chunk_losses": chunk_losses,
        "chunk_alignment": (
            {
                **align.summary(),
                "ranking_before": ranking_before,
                "ranking_after": align.ranking(model, volumes, device),
            }
            if align is not None
            else None
        ),
        "train_retrieval_before": before,
        "train_retrieval_after": after,
        "train_modality_gap_before": gap_before,
        "train_modality_gap_after": gap_after,
        "gap_weight": tcfg.gap_weight,
        "soft_targets": tcfg.soft_targets,
        "soft_target_weight": tcfg.soft_target_weight if tcfg.soft_targets != "none" else 0.0,
        "n_labelled_pairs": int(known.sum()) if known is not None else None,
        "same_metadata_negatives_only": list(tcfg.same_metadata_negatives_only),
        "n_pairs": len(pairs),
        "report_sources": sources,
        "logit_scale": float(model.logit_scale.detach()),
        "note": (
            "train-set retrieval of the pairs the tower was trained on; annotation-derived captions are not "
            "radiologist reports; this demonstrates the training code path, not a CT-RATE-scale encoder"
        ),
    }
    encoder = SharedSpaceEncoder(
        text_encoder,
        model.tower,
        preprocess,
        name=f"shared-space:{Path(cfg.volume_model).stem}",
        device=device,
        extra={"text_encoder_spec": text_spec, "train": {k: v for k, v in summary.items() if k != "note"}},
    )
    encoder.save_pretrained(out)
    atomic_write_text(out / SUMMARY, json.dumps({**summary, "fingerprint": encoder.fingerprint}, indent=2) + "\n")
    _plot_losses(epoch_losses, out / LOSS_FIGURE)
    return TrainResult(
        out_dir=out,
        epochs_done=len(epoch_losses),
        steps_done=step,
        epoch_losses=epoch_losses,
        retrieval_before=before,
        retrieval_after=after,
        fingerprint=encoder.fingerprint,
        resumed_from_epoch=start_epoch,
        report_sources=sources,
        epoch_chunk_losses=chunk_losses,
    )


@dataclass
class _ChunkAlignment:
    """Per-case region tables and region sentences (embedded once), and the batch loss built from them."""

    chunk_slices: int
    region_slices: list[torch.Tensor]  # (R, K_i) bool per case, on the encoder grid
    sentences: list[Any]  # RegionSentences per case
    sentence_emb: list[torch.Tensor]  # (S_i, E) per case
    text_ids: list[list[int]]
    mask_sources: dict[str, str]

    def loss(
        self, model: VolumeTextCLIP, out: Any, idx: Sequence[int], plans: Sequence[AugmentPlan], device: str
    ) -> torch.Tensor:
        from ctrag.encoders.chunk_align import (
            batch_sentences,
            chunk_regions,
            chunk_sentence_targets,
            flatten_chunks,
            sigmoid_alignment_loss,
        )

        tables = [apply_plan(self.region_slices[i], plan, axes=(2,)) for i, plan in zip(idx, plans, strict=True)]
        depth = max(t.shape[1] for t in tables)
        slices = torch.stack([F.pad(t, (0, depth - t.shape[1]), value=False) for t in tables]).to(device)
        cov = chunk_regions(slices, out.slice_mask, self.chunk_slices)
        chunk_emb, chunk_cov, chunk_case = flatten_chunks(out.chunk_embeddings, cov, out.chunk_mask)
        s_emb, s_reg, s_case, s_ids = batch_sentences(
            [self.sentences[i] for i in idx], [self.sentence_emb[i] for i in idx], [self.text_ids[i] for i in idx]
        )
        labels = chunk_sentence_targets(chunk_cov, chunk_case, s_reg.to(device), s_case.to(device), s_ids.to(device))
        scale = model.chunk_logit_scale.clamp(max=MAX_CHUNK_LOGIT_SCALE)
        return sigmoid_alignment_loss(chunk_emb, s_emb.to(device), labels, scale, model.chunk_logit_bias)

    @torch.no_grad()
    def ranking(self, model: VolumeTextCLIP, volumes: Sequence[torch.Tensor], device: str) -> float:
        """Chunk-level ranking accuracy over the training set, un-augmented (chance 0.5).

        For each chunk, the share of (positive, negative) sentence pairs in which the positive sentence has the
        higher cosine. Unlike the loss, this cannot improve by moving the sigmoid's scale and bias alone: it says
        whether chunks moved towards the sentences of the regions they cover. (On a resumed run the "before" value
        is that of the resumed state.)
        """
        from ctrag.encoders.chunk_align import (
            batch_sentences,
            chunk_regions,
            chunk_sentence_targets,
            flatten_chunks,
        )
        from ctrag.encoders.sigvlp import SigVLPTower

        assert isinstance(model.tower, SigVLPTower)
        was_training = model.training
        model.eval()
        stacked, slice_mask = stack_depths(volumes)
        out = model.tower.encode(stacked.to(device), slice_mask.to(device))
        if was_training:
            model.train()
        depth = stacked.shape[-1]
        slices = torch.stack([F.pad(t, (0, depth - t.shape[1]), value=False) for t in self.region_slices])
        cov = chunk_regions(slices.to(device), out.slice_mask, self.chunk_slices)
        chunk_emb, chunk_cov, chunk_case = flatten_chunks(out.chunk_embeddings, cov, out.chunk_mask)
        s_emb, s_reg, s_case, s_ids = batch_sentences(self.sentences, self.sentence_emb, self.text_ids)
        labels = chunk_sentence_targets(chunk_cov, chunk_case, s_reg.to(device), s_case.to(device), s_ids.to(device))
        cos = F.normalize(chunk_emb, dim=-1) @ F.normalize(s_emb.to(device), dim=-1).t()
        scores = []
        for row, lab in zip(cos, labels, strict=True):
            pos, neg = row[lab > 0], row[lab < 0]
            if len(pos) and len(neg):
                scores.append(float((pos[:, None] > neg[None, :]).float().mean()))
        return float(np.mean(scores)) if scores else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "sentences_per_case": [len(s.texts) for s in self.sentences],
            "mask_sources": self.mask_sources,
            "chunk_slices": self.chunk_slices,
        }


MAX_CHUNK_LOGIT_SCALE = float(np.log(100.0))


def _chunk_alignment_data(
    cases: Sequence[Case],
    volumes: Sequence[torch.Tensor],
    preprocess: PreprocessConfig,
    text_encoder: Encoder,
    out: Path,
    cfg: EncoderConfig,
) -> _ChunkAlignment:
    from ctrag.encoders.chunk_align import case_region_sentences, load_case_region_slices

    sentences = [case_region_sentences(c) for c in cases]
    if not any(s.texts for s in sentences):
        raise InvalidInputError(
            "train.chunk_align_weight > 0 but no training report has a sentence the Reg2RG region tagger places "
            "(ctrag.reporting.sentences); set train.chunk_align_weight=0"
        )
    all_texts = sorted({t for s in sentences for t in s.texts})
    ids = {t: i for i, t in enumerate(all_texts)}
    with EmbeddingCache(out / TEXT_CACHE) as cache:
        emb = torch.from_numpy(encode_text_cached(text_encoder, all_texts, cache, cfg.text_batch_size))
    tables, sources = [], {}
    for case, volume in zip(cases, volumes, strict=True):
        table, source = load_case_region_slices(
            case, preprocess, min_voxels=cfg.train.chunk_min_voxels, expected_depth=volume.shape[-1]
        )
        tables.append(torch.from_numpy(table))
        sources[case.case_id] = source
    arch = _tower_config(cfg.volume_model, text_encoder.dim)
    assert not isinstance(arch, VolumeTowerConfig)
    return _ChunkAlignment(
        chunk_slices=arch.chunk_slices,
        region_slices=tables,
        sentences=sentences,
        sentence_emb=[emb[torch.tensor([ids[t] for t in s.texts], dtype=torch.long)] for s in sentences],
        text_ids=[[ids[t] for t in s.texts] for s in sentences],
        mask_sources=sources,
    )


def _case_labels(cases: Sequence[Case]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 18) labels (zeros where unknown) and the (n,) mask of cases that have them; none labelled is an error."""
    known = torch.tensor([c.labels is not None for c in cases])
    if not bool(known.any()):
        raise InvalidInputError(
            "train.soft_targets=label_jaccard needs case labels, but none of the "
            f"{len(cases)} training cases has any (ingest CT-RATE labels, pseudo-pair with labelled reports, or "
            "set train.soft_targets=none)"
        )
    width = next(len(c.labels) for c in cases if c.labels is not None)
    labels = torch.tensor([list(c.labels) if c.labels is not None else [0] * width for c in cases])
    n_unknown = int((~known).sum())
    if n_unknown:
        logger.warning("%d of %d training cases have no labels; their targets stay one-hot", n_unknown, len(cases))
    return labels, known


def _caption_ids(texts: Sequence[str]) -> list[int]:
    ids: dict[str, int] = {}
    return [ids.setdefault(t, len(ids)) for t in texts]


def _check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """A checkpoint continues only the same run: same tower, preprocessing, text encoder and cases."""
    for key in ("tower", "preprocess", "case_ids"):
        if saved.get(key) != current.get(key):
            raise CheckpointMismatchError(
                f"{path}: cannot resume, '{key}' differs from the checkpoint ({saved.get(key)} vs {current.get(key)}); "
                "use a new --out folder or --no-resume"
            )
    if saved.get("text_encoder", {}).get("fingerprint") != current["text_encoder"]["fingerprint"]:
        raise CheckpointMismatchError(
            f"{path}: cannot resume, the text encoder changed ({saved.get('text_encoder')} vs "
            f"{current['text_encoder']}); use a new --out folder or --no-resume"
        )


def _plot_losses(losses: Sequence[float], path: Path) -> None:
    if not losses:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(range(1, len(losses) + 1), losses, marker="o", markersize=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("InfoNCE loss (mean)")
    ax.set_title("contrastive volume-report training")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def load_preprocess_section(source: str | os.PathLike[str] | None) -> PreprocessConfig:
    """The preset's ``preprocess:`` section (the project-wide preprocessing) as a ``PreprocessConfig``."""
    from ctrag.data.transforms import load_preprocess_config

    return load_preprocess_config(str(source) if source is not None else "tiny-cpu")


__all__ = [
    "AugmentPlan",
    "TrainResult",
    "TrainingPair",
    "apply_plan",
    "augment",
    "augment_plan",
    "centroid_gap_penalty",
    "load_preprocess_section",
    "load_training_pairs",
    "select_training_cases",
    "stack_depths",
    "train_encoder",
    "train_modality_gap",
    "train_retrieval",
]
