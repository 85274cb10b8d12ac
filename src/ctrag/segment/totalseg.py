"""TotalSegmentator as an optional backend: used only when the package *and* its weights are on disk.

RAG-Text2CT segments its CTs with TotalSegmentator ("total" task, 117 classes). Its full install pulls
torchvision, which breaks beside ctrag's torch, and its weights are downloaded on first use, which ctrag never
does. So the package is an optional extra, imported only inside ``_package_backend``, and every run first checks
that the exact weight folders TotalSegmentator would otherwise download are present; anything missing is reported
as a ``MissingDependencyError`` / ``WeightsNotFoundError`` naming what is missing and where it was looked for.

The call itself is a *backend*: a callable ``(nibabel image, TotalSegRequest) -> nibabel image``. The default one
calls ``totalsegmentator.python_api.totalsegmentator``; tests inject their own, so the wiring (weights discovery,
grid and affine handling, label validation) is exercised without the real package.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ctrag.data.labels import totalseg_v2_labels
from ctrag.data.nifti import Volume, check_label_mask, same_grid
from ctrag.errors import DataValidationError, MissingDependencyError, WeightsNotFoundError
from ctrag.segment.config import TotalSegConfig
from ctrag.segment.grid import resample_labels_nearest
from ctrag.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

HAS_TOTALSEGMENTATOR: bool = importlib.util.find_spec("totalsegmentator") is not None
"""Whether the ``totalsegmentator`` package is importable (checked without importing it)."""

INSTALL_HINT = (
    "pip install 'ctrag[totalseg]' where a torchvision matching the installed torch is available, "
    "or use method 'classical'"
)

# nnU-Net result folders TotalSegmentator v2 reads for the "total" task; it downloads any that is missing.
TOTAL_DATASETS: dict[bool, tuple[str, ...]] = {
    True: ("Dataset297_TotalSegmentator_total_3mm_1559subj",),
    False: (
        "Dataset291_TotalSegmentator_part1_organs_1559subj",
        "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
        "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
        "Dataset294_TotalSegmentator_part4_muscles_1559subj",
        "Dataset295_TotalSegmentator_part5_ribs_1559subj",
    ),
}
CHECKPOINT_NAME = "checkpoint_final.pth"


@dataclass(frozen=True)
class TotalSegRequest:
    """What a backend is asked to do (all paths resolved, weights verified)."""

    task: str
    fast: bool
    device: str
    results_dir: Path
    home_dir: Path | None


TotalSegBackend = Callable[[nib.Nifti1Image, TotalSegRequest], Any]


@dataclass(frozen=True)
class TotalSegStatus:
    """Outcome of the availability check: what was found and, if anything is missing, what."""

    package: bool
    weights_dir: Path | None
    results_dir: Path | None
    missing: tuple[str, ...]

    @property
    def weights_ok(self) -> bool:
        return self.results_dir is not None and not self.missing

    @property
    def available(self) -> bool:
        return self.package and self.weights_ok

    def reason(self) -> str:
        """One sentence per missing thing; empty when available."""
        parts = []
        if not self.package:
            parts.append(f"the Python package 'totalsegmentator' is not installed ({INSTALL_HINT})")
        if self.weights_dir is None:
            parts.append(
                "no weights directory was given (set segment.totalseg.weights_dir or --weights to a "
                "TOTALSEG_HOME_DIR-style folder holding nnunet/results/Dataset2xx_*)"
            )
        elif self.results_dir is None:
            parts.append(f"weights directory {self.weights_dir} does not exist")
        elif self.missing:
            parts.append(
                f"weights missing under {self.results_dir}: {', '.join(self.missing)} "
                f"(each a folder with a non-empty {CHECKPOINT_NAME}; ctrag never downloads them)"
            )
        return "; ".join(parts)


def find_results_dir(weights_dir: str | os.PathLike[str]) -> Path | None:
    """The nnU-Net results folder for ``weights_dir``: ``<dir>/nnunet/results`` (TOTALSEG_HOME_DIR style) if it
    exists, else ``<dir>`` itself (TOTALSEG_WEIGHTS_PATH style); None if the directory does not exist."""
    root = Path(weights_dir).expanduser()
    if not root.is_dir():
        return None
    nested = root / "nnunet" / "results"
    return nested if nested.is_dir() else root


def _has_checkpoint(folder: Path) -> bool:
    return any(p.is_file() and p.stat().st_size > 0 for p in folder.rglob(CHECKPOINT_NAME))


def totalsegmentator_status(
    weights_dir: str | os.PathLike[str] | None, *, fast: bool = True, package: bool | None = None
) -> TotalSegStatus:
    """Check, without importing or downloading anything, whether TotalSegmentator can run ("total" task).

    ``package`` overrides the installed-package check (used when a backend is injected).
    """
    has_package = HAS_TOTALSEGMENTATOR if package is None else package
    if weights_dir is None:
        return TotalSegStatus(has_package, None, None, TOTAL_DATASETS[fast])
    results = find_results_dir(weights_dir)
    if results is None:
        return TotalSegStatus(has_package, Path(weights_dir), None, TOTAL_DATASETS[fast])
    missing = tuple(name for name in TOTAL_DATASETS[fast] if not _has_checkpoint(results / name))
    return TotalSegStatus(has_package, Path(weights_dir), results, missing)


def totalsegmentator_available(weights_dir: str | os.PathLike[str] | None, *, fast: bool = True) -> bool:
    """True when the package is installed and the weights for the "total" task (fast or full) are on disk."""
    return totalsegmentator_status(weights_dir, fast=fast).available


def _ts_device(device: str) -> str:
    """torch-style device name → TotalSegmentator's ("cuda:1" → "gpu:1")."""
    if device == "cuda":
        return "gpu"
    if device.startswith("cuda:"):
        return "gpu:" + device.split(":", 1)[1]
    return device


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a call (TotalSegmentator reads its paths from them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _package_backend(image: nib.Nifti1Image, request: TotalSegRequest) -> Any:
    """Run the installed TotalSegmentator package on an in-memory image (weights already verified)."""
    from totalsegmentator.python_api import totalsegmentator  # optional dependency

    env = {"TOTALSEG_WEIGHTS_PATH": str(request.results_dir)}
    if request.home_dir is not None:
        env["TOTALSEG_HOME_DIR"] = str(request.home_dir)
        config = request.home_dir / "config.json"
        if not config.exists():
            # TotalSegmentator would create this with usage statistics switched on (a network call per run).
            atomic_write_text(
                config,
                json.dumps(
                    {
                        "totalseg_id": "totalseg_ctrag_offline",
                        "send_usage_stats": False,
                        "prediction_counter": 0,
                        "statistics_disclaimer_shown": True,
                    },
                    indent=4,
                ),
            )
    with _environ(env):
        return totalsegmentator(
            image,
            None,
            ml=True,
            task=request.task,
            fast=request.fast,
            device=_ts_device(request.device),
            quiet=True,
        )


def _as_array_and_affine(result: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(result, nib.spatialimages.SpatialImage):
        return np.asanyarray(result.dataobj), np.asarray(result.affine, dtype=np.float64)
    if isinstance(result, Volume):
        return np.asarray(result.array), result.affine
    raise DataValidationError(
        f"TotalSegmentator backend returned {type(result).__name__}; expected a nibabel image or a Volume"
    )


def run_totalsegmentator(
    volume: Volume, config: TotalSegConfig | None = None, *, backend: TotalSegBackend | None = None
) -> Volume:
    """TotalSegmentator "total" labels (v2 ids 1..117, uint8) on the grid of ``volume``.

    Raises ``MissingDependencyError`` if the package is absent (and no ``backend`` is given) and
    ``WeightsNotFoundError`` if the weights are; both messages say what is missing. A mask returned on another
    grid (TotalSegmentator reorients and resamples internally) is mapped back with nearest neighbour.
    """
    cfg = config or TotalSegConfig()
    status = totalsegmentator_status(cfg.weights_dir, fast=cfg.fast, package=True if backend else None)
    if not status.package:
        raise MissingDependencyError(f"TotalSegmentator is unavailable: {status.reason()}")
    if not status.weights_ok:
        raise WeightsNotFoundError(f"TotalSegmentator is unavailable: {status.reason()}")
    assert status.results_dir is not None and status.weights_dir is not None
    home = status.weights_dir if status.results_dir != status.weights_dir else None
    request = TotalSegRequest(
        task=cfg.task, fast=cfg.fast, device=cfg.device, results_dir=status.results_dir, home_dir=home
    )
    image = nib.Nifti1Image(np.asarray(volume.array), volume.affine)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    run = backend or _package_backend
    array, affine = _as_array_and_affine(run(image, request))
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataValidationError(f"TotalSegmentator returned {array.ndim}-D labels of shape {array.shape}")
    labels = Volume(array=array, affine=affine, path="TotalSegmentator output")
    check_label_mask(labels, allowed=set(totalseg_v2_labels()))
    array = np.asarray(array).astype(np.uint8)
    meta: dict[str, Any] = {"method": "totalsegmentator", "labels": "total", "task": cfg.task, "fast": cfg.fast}
    if not same_grid(array.shape, affine, volume.shape, volume.affine):
        logger.info("TotalSegmentator output is on another grid; resampling (nearest) onto the input grid")
        array = resample_labels_nearest(array, affine, volume.shape, volume.affine)
        meta["resampled_from_shape"] = list(labels.shape)
    return Volume(array=array, affine=volume.affine.copy(), path=None, meta=meta)
