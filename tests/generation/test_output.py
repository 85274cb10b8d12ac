"""Writing a generation result (``ctrag.generation.output``): NIfTI in int16 HU with the result's affine, the
provenance JSON and the tri-planar PNG, written as one unit. The result is the session-trained tiny pipeline's
(``result`` in conftest.py), so the files are those ``ctrag generate`` writes."""

from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path

import numpy as np
import pytest

from ctrag.data.nifti import load_volume
from ctrag.errors import InvalidInputError
from ctrag.generation.output import output_paths, save_result, write_overlay_png


def test_written_nifti_provenance_and_png(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = save_result(result, tmp_path / "ct.nii.gz")
    vol = load_volume(paths["volume"])
    assert vol.array.dtype == np.int16 and vol.shape == result.volume.shape
    assert np.allclose(vol.affine, result.affine, atol=1e-4) and vol.spacing == pytest.approx(result.spacing)
    assert np.abs(vol.array - result.volume).max() <= 0.5 + 1e-3  # rounded HU
    assert vol.meta["qform_code"] == 1 and vol.meta["sform_code"] == 1
    prov = json.loads(paths["provenance"].read_text())
    for key in (
        "report_sha256",
        "retrieved",
        "mask_source",
        "strategy",
        "seed",
        "config",
        "weights_sha256",
        "timings_s",
    ):
        assert key in prov
    assert prov["retrieved"][0]["score"] == pytest.approx(result.retrieved[0]["score"])
    assert set(prov["weights_sha256"]) == {"vae", "unet", "controlnet"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "ct.png", "ct.provenance.json"]


def test_disk_full_leaves_no_file_under_the_final_name(result, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import ctrag.generation.output as output

    out = tmp_path / "full.nii.gz"
    good = save_result(result, tmp_path / "previous.nii.gz")

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "write_overlay_png", no_space)  # fails after the NIfTI and JSON were written
    with pytest.raises(OSError, match="No space"):
        save_result(result, out)
    assert not any(p.exists() for p in output_paths(out).values())
    # writing over an existing result that fails keeps the previous files intact
    before = {k: p.read_bytes() for k, p in good.items()}
    with pytest.raises(OSError):
        save_result(result, tmp_path / "previous.nii.gz")
    assert {k: p.read_bytes() for k, p in good.items()} == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_output_paths_name_the_siblings_and_refuse_other_suffixes(tmp_path: Path) -> None:
    assert output_paths(tmp_path / "a.nii.gz") == {
        "volume": tmp_path / "a.nii.gz",
        "provenance": tmp_path / "a.provenance.json",
        "png": tmp_path / "a.png",
    }
    assert output_paths(tmp_path / "b.v2.nii")["provenance"] == tmp_path / "b.v2.provenance.json"
    with pytest.raises(InvalidInputError, match=r"must end with \.nii\.gz or \.nii"):
        output_paths(tmp_path / "ct.txt")


def test_uncompressed_without_png_and_with_extra_provenance(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = save_result(result, tmp_path / "ct.nii", png=False, extra_provenance={"dice_vs_proxy": {"lungs": 0.9}})
    assert set(paths) == {"volume", "provenance"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii", "ct.provenance.json"]
    assert paths["volume"].read_bytes()[:2] != b"\x1f\x8b"  # not gzip
    assert load_volume(paths["volume"]).shape == result.volume.shape
    prov = json.loads(paths["provenance"].read_text())
    assert prov["dice_vs_proxy"] == {"lungs": 0.9} and "png" not in prov["files"]
    assert prov["files"]["volume"] == str(tmp_path / "ct.nii")
    assert prov["hu_range"] == [float(result.volume.min()), float(result.volume.max())]
    assert prov["spacing_mm"] == pytest.approx(list(result.spacing))


def test_hu_outside_int16_is_clipped_not_wrapped(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hot = result.volume.astype(np.float32).copy()
    hot.flat[0], hot.flat[1] = 40000.0, -40000.0
    paths = save_result(dataclasses.replace(result, volume=hot), tmp_path / "hot.nii.gz", png=False)
    stored = load_volume(paths["volume"]).array
    assert stored.flat[0] == 32767 and stored.flat[1] == -32768


def test_volume_views_and_the_png_without_a_proxy(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vol = result.to_volume()
    assert vol.meta["generated"] is True and np.array_equal(vol.affine, result.affine)
    assert vol.affine is not result.affine  # a copy: editing it cannot move the result's grid
    mask = result.mask_volume()
    assert mask is not None and np.array_equal(mask.array, result.mask)
    text_only = dataclasses.replace(result, mask=None, mask_source="none", retrieved=[])
    assert text_only.mask_volume() is None
    with_proxy = write_overlay_png(tmp_path / "proxy.png", result)
    alone = write_overlay_png(tmp_path / "alone.png", text_only)

    def height(path: Path) -> int:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        return int.from_bytes(data[20:24], "big")  # IHDR: width at 16, height at 20

    assert height(alone) < 0.7 * height(with_proxy)  # one row (CT alone) instead of two
