"""A generation result (``GenerationResult``) and writing it: NIfTI (HU, int16, correct affine), provenance JSON,
tri-planar PNG.

The three files are written as one unit: each goes to a temporary name beside its destination, and only when
all three are complete are they renamed into place. A failure on the way (disk full, a killed process, a bad
path) leaves no file under a final name and no temporary behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctrag._version import __version__
from ctrag.data.labels import as_coarse
from ctrag.data.nifti import Volume, save_volume
from ctrag.utils.atomic import atomic_path


@dataclass
class GenerationResult:
    """A generated CT and its provenance. ``volume`` is in Hounsfield units on the grid given by ``affine``."""

    volume: np.ndarray
    affine: np.ndarray
    mask: np.ndarray | None
    mask_source: str
    label_set: str
    report_sha256: str
    strategy: str
    retrieved: list[dict[str, Any]]
    seed: int
    steps: int
    cfg: float
    control_scale: float
    config: dict[str, Any]
    weights: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    mask_origin: str = ""
    device: str = "cpu"

    @property
    def spacing(self) -> tuple[float, float, float]:
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    def to_volume(self) -> Volume:
        return Volume(array=self.volume, affine=self.affine.copy(), meta={"generated": True})

    def mask_volume(self) -> Volume | None:
        return None if self.mask is None else Volume(array=self.mask, affine=self.affine.copy())

    def provenance(self) -> dict[str, Any]:
        """JSON-ready record of how this volume was made (no report text, only its hash)."""
        return {
            "ctrag_version": __version__,
            "report_sha256": self.report_sha256,
            "strategy": self.strategy,
            "retrieved": self.retrieved,
            "mask_source": self.mask_source,
            "mask_origin": self.mask_origin,
            "label_set": self.label_set,
            "seed": self.seed,
            "steps": self.steps,
            "cfg": self.cfg,
            "control_scale": self.control_scale,
            "shape": list(self.volume.shape),
            "spacing_mm": list(self.spacing),
            "affine": self.affine.tolist(),
            "hu_range": [float(self.volume.min()), float(self.volume.max())],
            "weights_sha256": self.weights,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "device": self.device,
            "config": self.config,
        }


def output_paths(out: str | os.PathLike[str]) -> dict[str, Path]:
    """``out.nii.gz`` -> its provenance (``out.provenance.json``) and picture (``out.png``) siblings."""
    path = Path(out)
    name = path.name
    if not (name.endswith(".nii.gz") or name.endswith(".nii")):
        from ctrag.errors import InvalidInputError

        raise InvalidInputError(f"--out must end with .nii.gz or .nii, got {path}")
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]
    return {
        "volume": path,
        "provenance": path.with_name(f"{stem}.provenance.json"),
        "png": path.with_name(f"{stem}.png"),
    }


def save_result(
    result: GenerationResult,
    out: str | os.PathLike[str],
    *,
    png: bool = True,
    extra_provenance: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the CT (int16 HU), provenance JSON and (optionally) the overlay PNG; returns the paths written."""
    paths = output_paths(out)
    provenance = {**result.provenance(), **(extra_provenance or {}), "files": {k: str(v) for k, v in paths.items()}}
    if not png:
        provenance["files"].pop("png")
    hu = np.clip(np.rint(result.volume), -32768, 32767).astype(np.int16)
    with contextlib.ExitStack() as stack:
        tmp_vol = stack.enter_context(
            atomic_path(paths["volume"], suffix=".nii.gz" if str(out).endswith(".gz") else ".nii")
        )
        tmp_json = stack.enter_context(atomic_path(paths["provenance"], suffix=".json"))
        tmp_png = stack.enter_context(atomic_path(paths["png"], suffix=".png")) if png else None
        save_volume(tmp_vol, hu, result.affine, description="ctrag generated CT (synthetic)")
        tmp_json.write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        if tmp_png is not None:
            write_overlay_png(tmp_png, result)
    written = dict(paths)
    if not png:
        written.pop("png")
    return written


def write_overlay_png(path: str | os.PathLike[str], result: GenerationResult) -> Path:
    """Tri-planar PNG: the generated CT alone (top row) and with the proxy's outlines drawn on it (bottom row).

    Outlines rather than filled colours keep the CT visible under the mask. Views are in the closest-RAS
    orientation, radiological convention (patient left on the right), through the centre of the proxy's lungs.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ctrag.segment.overlay import COARSE_COLOURS, triplanar_views

    mask = result.mask if result.mask is not None else np.zeros(result.volume.shape, dtype=np.uint8)
    views = triplanar_views(np.asarray(result.volume), as_coarse(mask, result.label_set), result.affine)
    rows = 2 if result.mask is not None else 1
    fig, axes = plt.subplots(rows, 3, figsize=(12, 4.2 * rows), squeeze=False)
    for col, (name, ct2d, lab2d, aspect) in enumerate(views):
        for row in range(rows):
            ax = axes[row, col]
            ax.imshow(ct2d, cmap="gray", vmin=-1000, vmax=500, origin="lower", aspect=aspect)
            if row == 1:
                for code, rgb in COARSE_COLOURS.items():
                    if (lab2d == code).any():
                        ax.contour(lab2d == code, levels=[0.5], colors=[rgb], linewidths=1.0, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name if row == 0 else f"{name} + proxy outlines")
    axes[-1, 0].set_xlabel("patient R  <->  patient L")
    title = f"synthetic CT (HU -1000..500) | proxy: {result.mask_source}"
    if result.retrieved:
        title += f" ({result.retrieved[0]['case_id']}, {result.strategy})"
    fig.suptitle(title)
    fig.tight_layout()
    final = Path(path)
    with atomic_path(final, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=70, format="png")
    plt.close(fig)
    return final
