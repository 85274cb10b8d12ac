"""Training data for the generator: corpus cases in the generator's image space, crops, and latent banks.

What the shipped corpus allows is small, so what each case contributes is explicit:

* every CT of the training split in the VAE's image space, for the VAE and as crops to encode (never a case
  the preset's evaluation evaluates, see ``ctrag.data.heldout``);
* its text embedding when the case has text (for the shipped CTs an *annotation-derived* caption, recorded
  as such), otherwise the null embedding;
* a label map in the ControlNet's label set: from ``ctrag.segment`` (``mask_from="segment"``), from the case's
  own mask (``"case"``, e.g. TotalSegmentator masks for CT-RATE) or the case mask where there is one
  (``"case-or-segment"``).

Batches are drawn with a ``torch.Generator`` seeded from (seed, step, rank), so step ``k`` sees the same batch
whether a run went straight through or was resumed, which is what makes resumed loss curves identical.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ctrag.data.case import Case, Corpus
from ctrag.data.heldout import HeldOut
from ctrag.data.nifti import Volume, load_volume
from ctrag.errors import DataValidationError, InvalidInputError
from ctrag.generation.config import ImageSpaceConfig
from ctrag.generation.imagespace import ct_to_space, labels_to_grid
from ctrag.generation.masks import convert_labels, flip_left_right, source_space

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


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """A generator whose state depends only on (seed, step, rank, stream), never on what ran before."""
    gen = torch.Generator()
    gen.manual_seed(
        (int(seed) * 1_000_003 + int(step) * 9_176 + int(rank) * 104_729 + int(stream) * 7_919) % (2**63 - 1)
    )
    return gen


def segment_ct(volume: Volume, segment_config: Any | None = None, *, check_intensity: bool = True) -> Volume:
    """Coarse anatomy labels of a CT from ``ctrag.segment.segment_volume`` (classical backend by default).

    ``check_intensity=False`` is for generated volumes, whose HU statistics need not look like a scanner's.
    """
    import dataclasses

    from ctrag.segment import SegmentConfig, segment_volume

    cfg = segment_config if segment_config is not None else SegmentConfig()
    if cfg.labels != "coarse":
        raise InvalidInputError("the generator works with coarse segmentations (segment.labels: coarse)")
    if not check_intensity:
        cfg = dataclasses.replace(cfg, check_intensity=False)
    return segment_volume(volume, cfg)


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
    space: ImageSpaceConfig,
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
    out: list[TrainingCase] = []
    for case in cases:
        assert case.volume_path is not None
        ct = load_volume(case.volume_path)
        image, affine = ct_to_space(ct, space, min_shape)
        item = TrainingCase(case_id=case.case_id, image=image, affine=affine)
        if label_set is not None:
            item.labels, item.mask_origin = _case_labels(
                case, ct, image.shape, affine, label_set, mask_from, segment_config
            )
        out.append(item)
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
    return labels_to_grid(grid_mask, shape, affine), origin


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
        """``{"image": (B,1,X,Y,Z) float32, "labels": (B,1,X,Y,Z) uint8 | None, "case_index": (B,)}``."""
        assert self.weights is not None
        idx = torch.multinomial(
            torch.as_tensor(self.weights, dtype=torch.float64), batch, replacement=True, generator=gen
        )
        images, labels = [], []
        for i in idx.tolist():
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
            images.append(img)
            if lab is not None:
                labels.append(lab)
        return {
            "image": torch.stack(images),
            "labels": torch.stack(labels) if len(labels) == len(images) else None,
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
    progress: Callable[[int, int], None] | None = None,
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
            progress(done, n)
    return LatentBank(
        latents=torch.cat(lat),
        case_index=torch.cat(idx),
        labels=torch.cat(labs) if labs else None,
    )
