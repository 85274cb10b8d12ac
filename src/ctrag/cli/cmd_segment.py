"""``ctrag segment``: CT -> anatomy label map (TotalSegmentator from local weights, or the classical fallback)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from ctrag.cli._app import app, console
from ctrag.config import config_to_dict, load_config
from ctrag.errors import InvalidInputError
from ctrag.utils.atomic import atomic_write_text

LABEL_SETS = ("coarse", "total")
METHODS = ("classical", "totalsegmentator")


def _sidecar(out: Path) -> Path:
    name = out.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else out.stem
    return out.with_name(f"{stem}.json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


@app.command("segment")
def segment_command(
    ct: Annotated[Path, typer.Argument(help="CT volume (NIfTI, Hounsfield units).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output mask (.nii.gz, uint8, on the CT's grid).")],
    method: Annotated[str, typer.Option(help="Backend: classical or totalsegmentator.")] = "",
    labels: Annotated[
        str, typer.Option(help="Label set: coarse (body, lungs, airway, bone) or total (TotalSegmentator ids).")
    ] = "",
    weights: Annotated[
        Path | None,
        typer.Option(help="TotalSegmentator weights (TOTALSEG_HOME_DIR-style folder); default $TOTALSEG_HOME_DIR."),
    ] = None,
    fast: Annotated[
        bool | None, typer.Option("--fast/--full", help="TotalSegmentator 3 mm model (fast) or 1.5 mm models.")
    ] = None,
    device: Annotated[str, typer.Option(help="TotalSegmentator device: cpu, cuda or cuda:N.")] = "",
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="Preset name or YAML file (its segment: section).")
    ] = None,
    override: Annotated[
        list[str] | None, typer.Option("--set", help="Config override such as classical.bone_hu=220 (repeatable).")
    ] = None,
    png: Annotated[Path | None, typer.Option(help="Also write a tri-planar PNG of the mask over the CT.")] = None,
) -> None:
    """Segment CT into OUT and write OUT's sidecar JSON (config, what was found, volumes in mL)."""
    from ctrag.data.nifti import load_volume
    from ctrag.segment import SegmentConfig, segment_file

    if method and method not in METHODS:
        raise InvalidInputError(f"--method must be one of {list(METHODS)}, got {method!r}")
    if labels and labels not in LABEL_SETS:
        raise InvalidInputError(f"--labels must be one of {list(LABEL_SETS)}, got {labels!r}")
    if out.resolve() == ct.resolve():
        raise InvalidInputError(f"--out {out} would overwrite the input CT")
    if not (out.name.endswith(".nii.gz") or out.suffix == ".nii"):
        raise InvalidInputError(f"--out must be a .nii or .nii.gz path, got {out}")
    cfg = load_config(SegmentConfig, config, override or [], section="segment")
    totalseg = cfg.totalseg
    if weights is not None or (totalseg.weights_dir is None and os.environ.get("TOTALSEG_HOME_DIR")):
        totalseg = dataclasses.replace(totalseg, weights_dir=weights or Path(os.environ["TOTALSEG_HOME_DIR"]))
    if fast is not None:
        totalseg = dataclasses.replace(totalseg, fast=fast)
    if device:
        totalseg = dataclasses.replace(totalseg, device=device)
    cfg = dataclasses.replace(
        cfg,
        method=method or cfg.method,  # type: ignore[arg-type]
        labels=labels or cfg.labels,  # type: ignore[arg-type]
        totalseg=totalseg,
    )

    result = segment_file(ct, out, cfg)
    meta = dict(result.meta)
    sidecar = _sidecar(out)
    record = {"ct": str(ct), "mask": str(out), "config": config_to_dict(cfg), "result": meta}
    atomic_write_text(sidecar, json.dumps(_jsonable(record), indent=2) + "\n")
    if png is not None:
        from ctrag.data.labels import to_coarse
        from ctrag.data.nifti import Volume
        from ctrag.segment.overlay import save_overlay_png

        volume = load_volume(ct)
        shown = result.array if meta.get("labels") == "coarse" else to_coarse(result.array)
        save_overlay_png(png, volume, Volume(shown, volume.affine), title=f"{ct.name}: {meta.get('method')}")

    names: dict[int, str] = meta.get("label_names", {})
    spacing = np.linalg.norm(result.affine[:3, :3], axis=0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    ids, counts = np.unique(result.array, return_counts=True)
    table = Table(title=f"{out} ({meta.get('method')}, {meta.get('labels')} labels)")
    table.add_column("label", justify="right")
    table.add_column("name")
    table.add_column("mL", justify="right")
    for label_id, count in zip(ids.tolist(), counts.tolist(), strict=True):
        if label_id == 0:
            continue
        table.add_row(str(label_id), names.get(label_id, "?"), f"{count * voxel_ml:.1f}")
    console.print(table)
    console.print(f"wrote {out} and {sidecar}" + (f" and {png}" if png else ""))
