"""``ctrag segment`` in-process: outputs, sidecar, clear errors for bad input, nothing half-written (the CT and
mask fixtures are shared with tests/segment through the root conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctrag.cli import main
from ctrag.data.nifti import load_volume, save_volume


def test_segment_writes_mask_sidecar_and_png(tmp_path: Path, cts, classical, capsys) -> None:
    ct = cts["A0002"]
    out = tmp_path / "masks" / "a2.nii.gz"
    png = tmp_path / "a2.png"
    assert main(["segment", str(ct.path), "--out", str(out), "--png", str(png)]) == 0
    mask = load_volume(out)
    np.testing.assert_array_equal(mask.array, classical["A0002"].array)
    np.testing.assert_allclose(mask.affine, ct.affine)
    assert mask.meta["stored_dtype"] == "uint8"
    side = json.loads((tmp_path / "masks" / "a2.json").read_text())
    assert side["config"]["method"] == "classical" and side["result"]["airway"]["found"] is True
    assert side["result"]["volumes_ml"]["lung_left"] > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "lung_left" in printed and "lung_right" in printed


def test_config_overrides_reach_the_segmenter(tmp_path: Path, cts) -> None:
    out = tmp_path / "m.nii.gz"
    args = ["segment", str(cts["A0002"].path), "--out", str(out), "--config", "tiny-cpu"]
    assert main([*args, "--set", "classical.bone_hu=400"]) == 0
    strict = (load_volume(out).array == 5).sum()
    assert main(args) == 0
    assert (load_volume(out).array == 5).sum() > strict
    assert json.loads((tmp_path / "m.json").read_text())["config"]["classical"]["bone_hu"] == 200.0


@pytest.mark.parametrize(
    ("make_input", "extra", "message"),
    [
        ("slice2d", [], "expected a 3-D volume"),
        ("mask_as_ct", [], "no negative values"),
        ("normalised", [], "look normalised"),
        ("ct", ["--method", "totalsegmentator"], "'totalsegmentator' is not installed"),
        ("ct", ["--labels", "total"], 'labels "total"'),
        ("ct", ["--method", "nnunet"], "--method must be one of"),
        ("missing", [], "file not found"),
        ("folder", [], "is a folder, not a NIfTI file"),
    ],
)
def test_bad_input_fails_cleanly_and_keeps_existing_output(
    make_input, extra, message, tmp_path: Path, cts, ts_masks, capsys
) -> None:
    ct = cts["A0002"]
    if make_input == "slice2d":
        src = tmp_path / "slice.nii.gz"
        nib.save(nib.Nifti1Image(ct.array[:, :, 10], ct.affine), str(src))
    elif make_input == "mask_as_ct":
        src = Path(str(ts_masks["ts_sm"].path))
    elif make_input == "normalised":
        src = save_volume(tmp_path / "norm.nii.gz", (ct.array + 1024.0) / 4096.0, ct.affine, dtype=np.float32)
    elif make_input == "missing":
        src = tmp_path / "nope.nii.gz"
    elif make_input == "folder":  # a DICOM series folder passed as the CT
        src = tmp_path / "dicom_series"
        src.mkdir()
    else:
        src = Path(str(ct.path))
    out = tmp_path / "existing.nii.gz"
    out.write_bytes(b"previous result")
    code = main(["segment", str(src), "--out", str(out), *extra])
    assert code == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".existing")) == []


def test_missing_weights_named(tmp_path: Path, cts, capsys, monkeypatch) -> None:
    import ctrag.segment.totalseg as ts_mod

    monkeypatch.setattr(ts_mod, "HAS_TOTALSEGMENTATOR", True)  # as if installed: the weights are what is missing
    code = main(
        [
            "segment",
            str(cts["A0002"].path),
            "--out",
            str(tmp_path / "m.nii.gz"),
            "--method",
            "totalsegmentator",
            "--weights",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "Dataset297_TotalSegmentator_total_3mm_1559subj" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "m.nii.gz").exists()


def test_refuses_to_overwrite_the_input(cts, capsys) -> None:
    assert main(["segment", str(cts["A0002"].path), "--out", str(cts["A0002"].path)]) == 2
    assert "overwrite the input" in capsys.readouterr().err
