"""Training data for the generator: corpus cases in the generator's image space, crops, and latent banks.

What the shipped corpus allows is small, so what each case contributes is explicit:

* every CT of the training split in the VAE's image space, for the VAE and as crops to encode (never a case
  the preset's evaluation evaluates, see ``ctrag.data.heldout``);
* its text embedding when the case has text (for the shipped CTs an *annotation-derived* caption, recorded
  as such), otherwise the null embedding;
* a label map in the ControlNet's label set: from ``ctrag.segment`` (``mask_from="segment"``), from the case's
  own mask (``"case"``, e.g. TotalSegmentator masks for CT-RATE) or the case mask where there is one
  (``"case-or-segment"``).

Crops can be mirrored left-right (off by default, ``flip_prob``): a flip swaps the left/right labels so masks
stay anatomical, but heart and aorta change sides and the report keeps its laterality words, which
``flip_record`` writes into the run log. The frozen VAE encodes a bank of crops once (``latent_bank``, cached in
the run folder), from which the flow trainings draw their batches.

Each sample of a training batch is drawn from its own ``torch.Generator``, seeded from (seed, step, sample index)
(``engine.sample_generator``), so step ``k`` sees the same global batch whether a run went straight through, was
resumed, or runs on another number of processes: what makes resumed loss curves identical. The latent bank is
drawn once, from one generator.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ctrag.data.case import Case, Corpus
from ctrag.data.heldout import HeldOut
from ctrag.data.labels import convert_labels, label_names, left_right_table, source_space
from ctrag.data.nifti import Volume, load_volume
from ctrag.data.transforms import PreprocessConfig, ct_to_space, resample_to_grid
from ctrag.errors import ConfigError, DataValidationError, InvalidInputError
from ctrag.generation.config import TrainConfig
from ctrag.generation.proxy import segment_ct
from ctrag.generation.run_folder import component_hash, save_state_dict
from ctrag.generation.training.engine import Generators, MakeBatch, step_generator
from ctrag.utils.checkpoints import load_checkpoint_file
from ctrag.utils.hashing import sha256_json
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

MaskFrom = Literal["segment", "case", "case-or-segment"]


@dataclass
class TrainingCase:
    """One CT in image space with what conditions it."""

    case_id: str
    image: np.ndarray
    """(X, Y, Z) float32 in [0, 1], RAS, at the image-space spacing, at least the crop size."""
    affine: np.ndarray
    labels: np.ndarray | None = None
    """(X, Y, Z) label map of the ControlNet label set on the same grid."""
    mask_origin: str = ""
    context: np.ndarray | None = None
    """(D,) text embedding, or None: this case trains the null (unconditional) embedding only."""
    text_source: str = "none"


def select_training_cases(
    corpus: Corpus | Sequence[Case], splits: Sequence[str], need: str = "volume", held_out: HeldOut | None = None
) -> list[Case]:
    """Training cases of ``splits`` that have a volume (and a mask when ``need == "mask"``).

    Nothing an evaluation run evaluates is ever used: ``held_out`` (the preset's, ``GeneratorConfig.held_out``;
    by default the test split) refuses its splits and its cases with a ``LeakageError`` naming them.
    """
    guard = held_out if held_out is not None else HeldOut()
    guard.check_splits(splits, "the generator")
    cases = [c for c in corpus if c.split in splits and c.has_volume and (need != "mask" or c.has_mask)]
    guard.check_cases(cases, "the generator")
    if not cases:
        raise InvalidInputError(
            f"no {need}-bearing cases in split(s) {list(splits)} of the corpus; the generator needs real CT volumes"
        )
    return cases


def load_training_cases(
    corpus: Corpus | Sequence[Case],
    space: PreprocessConfig,
    *,
    splits: Sequence[str] = ("train",),
    min_shape: tuple[int, int, int] = (64, 64, 32),
    label_set: str | None = None,
    mask_from: MaskFrom = "segment",
    encoder: Any | None = None,
    segment_config: Any | None = None,
    held_out: HeldOut | None = None,
) -> list[TrainingCase]:
    """Load the training split's CTs into image space, with label maps and text embeddings when asked."""
    cases = select_training_cases(corpus, splits, held_out=held_out)
    out = [load_training_case(c, space, min_shape, label_set, mask_from, segment_config) for c in cases]
    if encoder is not None:
        texts = [(i, c.report_text) for i, c in enumerate(cases) if c.has_report and c.report_source != "none"]
        if texts:
            vecs = np.asarray(encoder.encode_text([t for _, t in texts]), dtype=np.float32)
            for (i, _), vec in zip(texts, vecs, strict=True):
                out[i].context = vec
                out[i].text_source = cases[i].report_source
    logger.info(
        "training cases: %s",
        ", ".join(f"{c.case_id} {c.image.shape} text={c.text_source} mask={c.mask_origin or '-'}" for c in out),
    )
    return out


def load_training_case(
    case: Case,
    space: PreprocessConfig,
    min_shape: tuple[int, int, int],
    label_set: str | None,
    mask_from: MaskFrom,
    segment_config: Any | None,
) -> TrainingCase:
    """One case's CT in image space with its label map (no text): the unit both the in-memory path and the
    latent cache build (``latent_cache.py``, one case at a time) load."""
    if case.volume_path is None:
        raise DataValidationError(f"case {case.case_id} has no CT volume")
    ct = load_volume(case.volume_path)
    image, affine = ct_to_space(ct, space, min_shape)
    item = TrainingCase(case_id=case.case_id, image=image, affine=affine)
    if label_set is not None:
        item.labels, item.mask_origin = _case_labels(
            case, ct, image.shape, affine, label_set, mask_from, segment_config
        )
    return item


def _case_labels(
    case: Case,
    ct: Volume,
    shape: tuple[int, ...],
    affine: np.ndarray,
    label_set: str,
    mask_from: MaskFrom,
    segment_config: Any | None,
) -> tuple[np.ndarray, str]:
    use_case = mask_from == "case" or (mask_from == "case-or-segment" and case.has_mask)
    if use_case:
        if not case.has_mask or case.mask_path is None:
            raise DataValidationError(f"case {case.case_id} has no mask (mask_from='case')")
        mask = load_volume(case.mask_path)
        src = source_space(case.mask_source, [int(v) for v in np.unique(mask.array)])
        body = None
        if src == "totalseg" and label_set != "totalseg":
            body = segment_ct(ct, segment_config).array > 0  # every coarse label lies inside the body
        converted = convert_labels(mask.array, src, label_set, body=body, name=case.mask_path)
        origin = f"case:{case.mask_source}"
    else:
        if label_set == "totalseg":
            raise InvalidInputError(
                "ctrag.segment produces coarse labels; a 'totalseg' ControlNet needs mask_from='case'"
            )
        seg = segment_ct(ct, segment_config)
        converted = convert_labels(seg.array, "coarse", label_set, name=f"{case.case_id} (segmented)")
        mask, origin = seg, "segment:classical"
    grid_mask = Volume(array=converted, affine=mask.affine)
    return np.asarray(resample_to_grid(grid_mask, shape, affine, mode="nearest", fill=0).array), origin


@cache
def _flip_table(label_set: str) -> torch.Tensor:
    return torch.as_tensor(left_right_table(label_names(label_set)))


def flip_left_right(mask: torch.Tensor, label_set: str, axis: int) -> torch.Tensor:
    """Mirror a label tensor along ``axis`` and swap left/right structures so the labels stay anatomical."""
    table = _flip_table(label_set).to(mask.device)
    return table[mask.long().flip(axis)].to(mask.dtype)


def flip_record(cfg: TrainConfig, label_set: str | None, text_conditioned: bool) -> dict[str, Any]:
    """What left-right flipping did to a run, for its log: a mirrored CT has heart and aorta on the wrong side
    and its left/right labels swapped, while the report text keeps its laterality words."""
    if cfg.flip_prob <= 0:
        return {"prob": 0.0}
    note = "left-right flips mirror the CT (heart and aorta change sides)"
    if label_set is not None:
        note += f" and swap the left/right labels of the {label_set!r} masks"
    if text_conditioned:
        note += "; laterality words in the report text (left/right) no longer match the flipped samples"
    # a text-free run (the VAE) loses nothing by mirroring; a text-conditioned one learns contradictions
    logger.log(logging.WARNING if text_conditioned else logging.INFO, "flip_prob %.2f: %s", cfg.flip_prob, note)
    return {"prob": cfg.flip_prob, "labels_swapped": label_set, "note": note}


# --------------------------------------------------------------------------------------------------- crops


@dataclass
class CropSampler:
    """Random crops (+ optional left-right flips that swap left/right labels) from in-memory training cases.

    The flip draw is made whatever ``flip_prob`` is, so every other draw of a step is the same with and without
    flips."""

    cases: list[TrainingCase]
    crop_shape: tuple[int, int, int]
    flip_prob: float = 0.0
    label_set: str | None = None
    weights: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        for c in self.cases:
            if any(s < k for s, k in zip(c.image.shape, self.crop_shape, strict=True)):
                raise DataValidationError(
                    f"{c.case_id}: image {c.image.shape} is smaller than the crop {self.crop_shape}"
                )
        if self.weights is None:
            self.weights = np.full(len(self.cases), 1.0 / len(self.cases))

    def sample(self, batch: int, gen: torch.Generator) -> dict[str, Any]:
        """``batch`` crops from one generator (the latent bank's draw):
        ``{"image": (B,1,X,Y,Z) float32, "labels": (B,1,X,Y,Z) uint8 | None, "case_index": (B,)}``."""
        idx = torch.multinomial(self._weights(), batch, replacement=True, generator=gen)
        return self._stack(idx, [self._crop(i, gen) for i in idx.tolist()])

    def sample_each(self, gens: Sequence[torch.Generator]) -> dict[str, Any]:
        """One crop per generator (a training batch: sample i from its own generator), same keys as ``sample``."""
        idx = torch.cat([torch.multinomial(self._weights(), 1, replacement=True, generator=g) for g in gens])
        return self._stack(idx, [self._crop(i, g) for i, g in zip(idx.tolist(), gens, strict=True)])

    def _weights(self) -> torch.Tensor:
        assert self.weights is not None
        return torch.as_tensor(self.weights, dtype=torch.float64)

    def _crop(self, i: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        case = self.cases[i]
        starts = [
            int(torch.randint(0, s - k + 1, (1,), generator=gen))
            for s, k in zip(case.image.shape, self.crop_shape, strict=True)
        ]
        sl = tuple(slice(a, a + k) for a, k in zip(starts, self.crop_shape, strict=True))
        flip = bool(torch.rand(1, generator=gen) < self.flip_prob)
        img = torch.from_numpy(np.ascontiguousarray(case.image[sl]))[None]
        lab = None if case.labels is None else torch.from_numpy(np.ascontiguousarray(case.labels[sl]))[None]
        if flip:
            img = img.flip(1)  # axis 0 of the volume (R-L in RAS), after the channel axis
            if lab is not None and self.label_set is not None:
                lab = flip_left_right(lab, self.label_set, axis=1)
        return img, lab

    @staticmethod
    def _stack(idx: torch.Tensor, crops: list[tuple[torch.Tensor, torch.Tensor | None]]) -> dict[str, Any]:
        labels = [lab for _, lab in crops if lab is not None]
        return {
            "image": torch.stack([img for img, _ in crops]),
            "labels": torch.stack(labels) if len(labels) == len(crops) else None,
            "case_index": idx,
        }


# -------------------------------------------------------------------------------------------- latent banks


@dataclass
class LatentBank:
    """Latent crops encoded once with the frozen VAE (posterior means, times ``scale_factor`` when applied)."""

    latents: torch.Tensor
    """(N, C, x, y, z) float32."""
    case_index: torch.Tensor
    labels: torch.Tensor | None = None
    """(N, 1, X, Y, Z) uint8 on the image grid of each crop (for ControlNet training)."""

    def __len__(self) -> int:
        return int(self.latents.shape[0])


@torch.no_grad()
def build_latent_bank(
    vae: Any,
    crops: CropSampler,
    n: int,
    seed: int,
    *,
    batch: int = 4,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> LatentBank:
    """Encode ``n`` random crops (deterministic given ``seed``) to VAE posterior means."""
    vae.eval()
    gen = step_generator(seed, 0, stream=1)
    lat, idx, labs = [], [], []
    done = 0
    while done < n:
        b = min(batch, n - done)
        sample = crops.sample(b, gen)
        z_mu, _ = vae.encode(sample["image"].to(device))
        lat.append(z_mu.float().cpu())
        idx.append(sample["case_index"])
        if sample["labels"] is not None:
            labs.append(sample["labels"])
        done += b
        if progress is not None:
            progress("encode latent bank", done, n)
    return LatentBank(
        latents=torch.cat(lat),
        case_index=torch.cat(idx),
        labels=torch.cat(labs) if labs else None,
    )


def latent_bank(
    run: Path,
    vae: nn.Module,
    vae_dir: Path,
    cases: list[TrainingCase],
    cfg: TrainConfig,
    n: int,
    label_key: Mapping[str, Any],
    device: torch.device,
    progress: ProgressFn | None = None,
) -> LatentBank:
    """Encode (or reuse from ``run/cache``) a bank of latent crops with their label crops."""
    key = sha256_json(
        {
            "vae": component_hash(vae_dir),
            "crop": list(cfg.crop_shape),
            "n": n,
            "seed": cfg.seed,
            "flip": cfg.flip_prob,
            "cases": [c.case_id for c in cases],
            **label_key,
        }
    )[:16]
    cache = run / "cache" / f"latent_bank_{key}.pt"
    if cache.is_file():
        data = load_checkpoint_file(cache)
        logger.info("latent bank: reusing %s", cache)
        return LatentBank(data["latents"], data["case_index"], data.get("labels"))
    crops = CropSampler(cases, cfg.crop_shape, cfg.flip_prob, label_set=label_key.get("label_set"))
    bank = build_latent_bank(vae, crops, n, cfg.seed, device=device, progress=progress)
    payload: dict[str, Any] = {"latents": bank.latents, "case_index": bank.case_index}
    if bank.labels is not None:
        payload["labels"] = bank.labels
    save_state_dict(payload, cache)
    return bank


def text_contexts(cases: list[TrainingCase], dim: int | None) -> torch.Tensor | None:
    """(n_cases, 1, D) text embeddings; cases without text get zeros and are always trained as 'dropped'."""
    if dim is None:
        return None
    out = torch.zeros(len(cases), 1, dim)
    for i, c in enumerate(cases):
        if c.context is not None:
            if c.context.shape[-1] != dim:
                raise ConfigError(
                    f"text embedding size {c.context.shape[-1]} differs from diffusion.cross_attention_dim {dim}"
                )
            out[i, 0] = torch.from_numpy(c.context)
    return out


def bank_batches(bank: LatentBank, with_mask: bool) -> MakeBatch:
    """``make_batch`` drawing one latent crop (and its label crop) from the bank per sample generator."""

    def make_batch(step: int, gens: Generators) -> Mapping[str, Any]:
        idx = torch.cat([torch.randint(0, len(bank), (1,), generator=g) for g in gens])
        batch: dict[str, Any] = {"latents": bank.latents[idx], "case_index": bank.case_index[idx]}
        if with_mask:
            if bank.labels is None:
                raise InvalidInputError("ControlNet training needs label maps for the training crops")
            batch["labels"] = bank.labels[idx]
        return batch

    return make_batch
