"""Writing a generation result: NIfTI (HU, int16, correct affine), provenance JSON, tri-planar PNG.

The three files are written as one unit: each goes to a temporary name beside its destination, and only when
all three are complete are they renamed into place. A failure on the way (disk full, a killed process, a bad
path) leaves no file under a final name and no temporary behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.data.labels import as_coarse
from ctrag.data.nifti import save_volume
from ctrag.generation.pipeline import GenerationResult
from ctrag.utils.atomic import atomic_path


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
