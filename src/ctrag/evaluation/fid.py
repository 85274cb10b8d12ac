"""FID 2.5D (axial / coronal / sagittal slices) and FID 3D (whole volumes), as in RAG-Text2CT Table 1.

The Fréchet distance itself is torchmetrics' closed form (or MONAI's ``FIDMetric``, same value, slower) on feature
vectors; this module decides *which* vectors:

Volumes (real and generated alike) are prepared by :func:`ctrag.evaluation.volumes.prepare_volume`: RAS,
HU clipped to [-1000, 1000] and scaled to [0, 1], trilinear resize to ``FIDConfig.volume_shape`` (by default
the shape the 3-D extractor was trained at).

2.5D slice sampling: for each plane, ``slices_per_volume`` slices at evenly spaced positions over the central
``central_fraction`` of that axis (the outer slices of a chest CT are mostly air or shoulders and would dominate
the statistics with near-constant images). Positions are deterministic, so FID(real, real) is exactly the
distance of a set to itself (0 up to round-off). Each slice is padded to a square with 0 (= air after the
window) and resized bilinearly to ``slice_size`` (default: the extractor's preferred size). One feature vector
per slice; FID per plane; the 2.5D average is the mean of the three planes.

3D: one feature vector per volume, or ``crops_per_volume`` sub-volumes (``crop_fraction`` of each axis, at
fixed positions: centre first, then the corners) when there are fewer volumes than a covariance needs; crops
are resized back to the extractor's training shape when it has one. A 3-D extractor that carries its own
preprocessing (the project's volume encoder) prepares the CT itself.

With few samples (n < feature dim) the covariance is rank-deficient; the distance is still defined (scipy's
``sqrtm``) but noisy, and ``FIDResult.n_real``/``n_fake`` are reported so a reader can judge.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ctrag.data.nifti import Volume
from ctrag.data.transforms import PreprocessConfig
from ctrag.errors import InvalidInputError
from ctrag.evaluation.features import FeatureExtractor
from ctrag.evaluation.volumes import DEFAULT_SPACE, prepare_volume
from ctrag.utils.progress import ProgressFn

#: Stage label of :meth:`FIDEvaluator.features` progress (one step per volume).
FEATURE_STAGE = "fid features"

logger = logging.getLogger(__name__)

PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
_PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


@dataclass
class FIDConfig:
    """Which extractors and how slices/volumes are sampled (section ``fid`` of the evaluation config)."""

    extractor_2d: str = "ctnet-slice"
    weights_2d: str | None = None
    extractor_3d: str = "ctnet-volume"
    weights_3d: str | None = None
    volume_shape: tuple[int, int, int] | None = None
    """Evaluation grid (I, J, K); ``None``: the 3-D extractor's training shape, else 64x64x48."""
    slice_size: int | None = None
    """Slice side in pixels; ``None``: the 2-D extractor's training size, else 64."""
    slices_per_volume: int = 16
    central_fraction: float = 0.8
    crops_per_volume: int = 1
    crop_fraction: float = 0.75
    batch_size: int = 16
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0.0 < self.central_fraction <= 1.0:
            raise ValueError(f"FIDConfig: central_fraction must be in (0, 1], got {self.central_fraction}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"FIDConfig: crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.slices_per_volume < 1 or self.crops_per_volume < 1:
            raise ValueError("FIDConfig: slices_per_volume and crops_per_volume must be >= 1")


def frechet_distance(real: np.ndarray, fake: np.ndarray, *, backend: str = "torchmetrics") -> float:
    """FID between two feature sets ``(n, d)``; tiny negative round-off is clipped to 0.

    ``backend="torchmetrics"`` (default) is torchmetrics' closed form, trace sqrt(S1 S2) as the sum of square roots
    of the eigenvalues of S1 S2: exact for covariance matrices and about 10x faster than a matrix square root,
    which matters when an ablation computes hundreds of FIDs. ``backend="monai"`` is MONAI's ``FIDMetric``
    (scipy ``sqrtm``); the two agree to round-off (checked in the tests). Covariances are unbiased (n - 1) in both.
    """
    a, b = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InvalidInputError(f"FID: feature sets must be (n, d) with equal d, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise InvalidInputError(
            f"FID needs at least 2 samples per set (got {a.shape[0]} real, {b.shape[0]} generated); "
            "add volumes or raise slices_per_volume / crops_per_volume"
        )
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if backend == "torchmetrics" and importlib.util.find_spec("torchmetrics") is None:
        backend = "monai"  # torchmetrics is in the `eval` extra; MONAI is a core dependency
    if backend == "torchmetrics":
        from torchmetrics.image.fid import _compute_fid

        value = float(_compute_fid(tb.mean(0), torch.cov(tb.T), ta.mean(0), torch.cov(ta.T)))
    elif backend == "monai":
        from monai.metrics import FIDMetric

        try:
            value = float(FIDMetric()(tb, ta))
        except ValueError as exc:  # MONAI: imaginary component too large (degenerate covariances)
            raise InvalidInputError(
                f"FID is numerically undefined for these features ({exc}); {a.shape[0]}/{b.shape[0]} samples of "
                f"dimension {a.shape[1]}: use more samples"
            ) from exc
    else:
        raise ValueError(f"frechet_distance: backend must be 'torchmetrics' or 'monai', got {backend!r}")
    if not np.isfinite(value):
        raise InvalidInputError(f"FID is not finite for these features ({a.shape[0]}/{b.shape[0]} samples)")
    if value < 0.0:
        if value < -1e-6 * max(1.0, float(np.trace(np.cov(a, rowvar=False)))):
            logger.warning("FID came out clearly negative (%g); covariances are ill-conditioned", value)
        value = 0.0
    return value


def slice_positions(length: int, n: int, central_fraction: float) -> np.ndarray:
    """``n`` evenly spaced indices over the central fraction of an axis of ``length`` (duplicates removed)."""
    margin = (1.0 - central_fraction) / 2.0 * (length - 1)
    pos = np.linspace(margin, length - 1 - margin, num=max(1, n))
    return np.unique(np.round(pos).astype(int))


def extract_slices(array: np.ndarray, plane: str, n_slices: int, central_fraction: float, size: int) -> torch.Tensor:
    """(n, 1, size, size) slices of a prepared (I, J, K) array in one plane; see the module docstring."""
    if plane not in _PLANE_AXIS:
        raise ValueError(f"unknown plane {plane!r}; planes: {PLANES}")
    axis = _PLANE_AXIS[plane]
    vol = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    idx = torch.from_numpy(slice_positions(vol.shape[axis], n_slices, central_fraction))
    slices = vol.index_select(axis, idx).movedim(axis, 0)  # (n, a, b)
    a, b = slices.shape[1:]
    side = max(a, b)
    pad = (((side - b) // 2), side - b - (side - b) // 2, ((side - a) // 2), side - a - (side - a) // 2)
    square = F.pad(slices[:, None], pad, value=0.0)
    if side != size:
        square = F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False)
    return square


def volume_crops(array: np.ndarray, n_crops: int, fraction: float) -> torch.Tensor:
    """(n, 1, *crop) sub-volumes at fixed positions (centre, then corners, then edge midpoints)."""
    vol = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if n_crops == 1 and fraction >= 1.0:
        return vol[None, None]
    crop = [max(1, round(s * fraction)) for s in vol.shape]
    anchors = [(0.5, 0.5, 0.5), *itertools.product((0.0, 1.0), repeat=3), *itertools.product((0.0, 0.5, 1.0), repeat=3)]
    seen: set[tuple[int, ...]] = set()
    out: list[torch.Tensor] = []
    for anchor in anchors:
        start = tuple(round(a * (s - c)) for a, s, c in zip(anchor, vol.shape, crop, strict=True))
        if start in seen:
            continue
        seen.add(start)
        out.append(vol[start[0] : start[0] + crop[0], start[1] : start[1] + crop[1], start[2] : start[2] + crop[2]])
        if len(out) == n_crops:
            break
    if len(out) < n_crops:
        raise InvalidInputError(f"volume_crops: only {len(out)} distinct crops exist, {n_crops} requested")
    return torch.stack(out)[:, None]


@dataclass
class FIDResult:
    """FID per plane (2.5D), their mean, 3D, and the sample counts behind them."""

    axial: float
    coronal: float
    sagittal: float
    average: float
    fid_3d: float | None
    n_real_slices: int
    n_fake_slices: int
    n_real_3d: int
    n_fake_3d: int

    def as_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


class FIDEvaluator:
    """Holds the extractors; caches nothing itself — call ``features`` once per set and reuse the result."""

    def __init__(
        self,
        config: FIDConfig,
        extractor_2d: FeatureExtractor,
        extractor_3d: FeatureExtractor | None = None,
        space: PreprocessConfig = DEFAULT_SPACE,
    ) -> None:
        if extractor_2d.spatial_dims != 2:
            raise InvalidInputError(f"2.5D FID needs a 2-D extractor, got {extractor_2d.name}")
        if extractor_3d is not None and extractor_3d.spatial_dims != 3:
            raise InvalidInputError(f"3D FID needs a 3-D extractor, got {extractor_3d.name}")
        self.config = config
        self.extractor_2d = extractor_2d
        self.extractor_3d = extractor_3d
        self.space = space

    @classmethod
    def from_config(cls, config: FIDConfig, space: PreprocessConfig = DEFAULT_SPACE) -> FIDEvaluator:
        """Extractors from ``config``; volumes are cut from ``space`` (the generator preset's image space)."""
        from ctrag.evaluation.features import create_extractor

        e2 = create_extractor(config.extractor_2d, config.weights_2d, config.device)
        e3 = create_extractor(config.extractor_3d, config.weights_3d, config.device) if config.extractor_3d else None
        return cls(config, e2, e3, space)

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        if self.config.volume_shape is not None:
            return tuple(int(s) for s in self.config.volume_shape)  # type: ignore[return-value]
        pref = self.extractor_3d.preferred_shape if self.extractor_3d is not None else None
        if pref is not None and len(pref) == 3:
            return (int(pref[0]), int(pref[1]), int(pref[2]))
        return (64, 64, 48)

    def prepare(self, volume: Volume) -> np.ndarray:
        """A CT (HU) on the evaluation grid in [0, 1]; apply to real and generated volumes alike."""
        return prepare_volume(volume, self.volume_shape, space=self.space)

    @property
    def slice_size(self) -> int:
        if self.config.slice_size is not None:
            return int(self.config.slice_size)
        pref = self.extractor_2d.preferred_shape
        return int(pref[0]) if pref else 64

    @property
    def fingerprints(self) -> dict[str, str | None]:
        return {
            "extractor_2d": self.extractor_2d.fingerprint,
            "extractor_3d": self.extractor_3d.fingerprint if self.extractor_3d else None,
            "volume_shape": "x".join(str(s) for s in self.volume_shape),
            "field_of_view_mm": "x".join(
                f"{a * b:g}" for a, b in zip(self.space.spacing, self.space.size, strict=True)
            ),
            "hu_window": "x".join(f"{v:g}" for v in self.space.hu_window),
            "slice_size": str(self.slice_size),
        }

    def features(
        self,
        volumes: Sequence[Volume | np.ndarray],
        progress: ProgressFn | None = None,
    ) -> dict[str, np.ndarray]:
        """Features of CTs: keys ``axial``/``coronal``/``sagittal`` and (with a 3-D extractor) ``volume``.

        ``Volume`` items (HU) are prepared here; arrays are taken as already prepared by :meth:`prepare`. A 3-D
        extractor with its own preprocessing (``FeatureExtractor.prepare``) receives the ``Volume`` instead.
        """
        cfg = self.config
        per: dict[str, list[np.ndarray]] = {p: [] for p in PLANES}
        vol_feats: list[np.ndarray] = []
        own_prep = self.extractor_3d is not None and self.extractor_3d.has_own_preprocessing
        for n, item in enumerate(volumes):
            arr = self.prepare(item) if isinstance(item, Volume) else np.asarray(item, dtype=np.float32)
            if tuple(arr.shape) != self.volume_shape:
                raise InvalidInputError(f"FID: volumes must be prepared to {self.volume_shape}, got {arr.shape}")
            for plane in PLANES:
                sl = extract_slices(arr, plane, cfg.slices_per_volume, cfg.central_fraction, self.slice_size)
                per[plane].append(self.extractor_2d(sl, cfg.batch_size))
            if self.extractor_3d is not None:
                if own_prep:
                    if not isinstance(item, Volume):
                        raise InvalidInputError(f"{self.extractor_3d.name} prepares CTs itself: pass Volumes")
                    arr3 = self.extractor_3d.prepare(item)
                else:
                    arr3 = arr
                fraction = cfg.crop_fraction if cfg.crops_per_volume > 1 else 1.0
                crops = volume_crops(arr3, cfg.crops_per_volume, fraction)
                if fraction < 1.0 and self.extractor_3d.preferred_shape is not None:
                    crops = F.interpolate(crops, size=tuple(arr3.shape), mode="trilinear", align_corners=False)
                vol_feats.append(self.extractor_3d(crops, max(1, cfg.batch_size // 4)))
            if progress is not None:
                progress(FEATURE_STAGE, n + 1, len(volumes))
        out = {p: np.concatenate(v) if v else np.zeros((0, self.extractor_2d.dim)) for p, v in per.items()}
        if self.extractor_3d is not None:
            out["volume"] = np.concatenate(vol_feats) if vol_feats else np.zeros((0, self.extractor_3d.dim))
        return out

    def compare(self, real: dict[str, np.ndarray], fake: dict[str, np.ndarray]) -> FIDResult:
        """FID of generated features against real ones (both from :meth:`features`)."""
        planes = {p: frechet_distance(real[p], fake[p]) for p in PLANES}
        fid3 = None
        if "volume" in real and "volume" in fake:
            fid3 = frechet_distance(real["volume"], fake["volume"])
        return FIDResult(
            axial=planes["axial"],
            coronal=planes["coronal"],
            sagittal=planes["sagittal"],
            average=float(np.mean(list(planes.values()))),
            fid_3d=fid3,
            n_real_slices=int(real["axial"].shape[0]),
            n_fake_slices=int(fake["axial"].shape[0]),
            n_real_3d=int(real["volume"].shape[0]) if "volume" in real else 0,
            n_fake_3d=int(fake["volume"].shape[0]) if "volume" in fake else 0,
        )
