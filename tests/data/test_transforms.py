"""Preprocessing transforms on the real CTs and masks: affines, label sets, HU mapping, grid resampling."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from ctrag.config import list_presets
from ctrag.data.case import Case
from ctrag.data.nifti import Volume, load_volume
from ctrag.data.transforms import (
    PREPROCESS_PRESETS,
    PreprocessConfig,
    RescaleIntensityd,
    UnitToHU,
    UnitToHUd,
    build_preprocess,
    case_to_item,
    hu_to_unit,
    load_preprocess_config,
    metatensor_to_volume,
    resample_to_grid,
    unit_to_hu,
    volume_to_metatensor,
)
from ctrag.errors import ConfigError, InvalidInputError

CROP_CT = Path("ct/lowres/ts_chest_crop_ct_3mm.nii.gz")
CROP_MASK = Path("ct/lowres/ts_chest_crop_ct_3mm_seg_total_subset.nii.gz")


def _world_centroid(array: np.ndarray, affine: np.ndarray, where: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(where).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def _affine(t: torch.Tensor) -> np.ndarray:
    return np.asarray(t.affine, dtype=np.float64)  # type: ignore[attr-defined]


def test_presets_match_yaml_and_paper() -> None:
    assert {"tiny-cpu", "text2ct-512"} <= set(list_presets())
    for name, cfg in PREPROCESS_PRESETS.items():
        assert load_preprocess_config(name) == cfg
    text2ct = PREPROCESS_PRESETS["text2ct-512"]
    assert text2ct.spacing == (0.75, 0.75, 3.0) and text2ct.size == (512, 512, 128)
    assert text2ct.hu_window == (-1000.0, 1000.0) and text2ct.orientation == "RAS"
    assert load_preprocess_config("tiny-cpu", ["size=[32,32,16]"]).size == (32, 32, 16)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mask_interp": "bilinear"}, "labels must not be blended"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be positive"),
        ({"hu_window": (100.0, -100.0)}, "low < high"),
        ({"orientation": "RRS"}, "three axis codes"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PreprocessConfig(**kwargs)  # type: ignore[arg-type]


def test_ct_and_mask_keep_world_position_labels_and_range(sample_dir: Path) -> None:
    """LPS CT + mask -> RAS, 4 mm: heart and bone centroids stay put in world mm, labels survive, HU -> [0, 1]."""
    ct, mask = load_volume(sample_dir / CROP_CT), load_volume(sample_dir / CROP_MASK)
    assert ct.orientation == "LPS"
    cfg = PreprocessConfig(spacing=(4.0, 4.0, 4.0), size=(64, 64, 64))  # large enough: pad only, no crop
    out = build_preprocess(cfg, mask_keys=["mask"])({"image": str(ct.path), "mask": str(mask.path)})
    img, seg = out["image"], out["mask"]
    assert img.shape == (1, 64, 64, 64) and seg.shape == (1, 64, 64, 64)
    assert nib.aff2axcodes(_affine(img)) == ("R", "A", "S")
    np.testing.assert_allclose(np.linalg.norm(_affine(img)[:3, :3], axis=0), (4, 4, 4), atol=1e-6)
    np.testing.assert_allclose(_affine(img), _affine(seg))
    assert seg.dtype == torch.uint8 and img.dtype == torch.float32
    assert set(torch.unique(seg).tolist()) == {0, *np.unique(mask.array).tolist()}
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    heart = 51
    before = _world_centroid(mask.array, mask.affine, mask.array == heart)
    after = _world_centroid(seg[0].numpy(), _affine(seg), seg[0].numpy() == heart)
    assert np.linalg.norm(before - after) < 4.0  # within one output voxel
    bone_before = _world_centroid(ct.array, ct.affine, ct.array > 400)
    unit = img[0].numpy()
    bone_after = _world_centroid(unit, _affine(img), unit > float(hu_to_unit(400.0)))
    assert np.linalg.norm(bone_before - bone_after) < 4.0
    # intensities: a soft-tissue voxel at the heart centroid maps like hu_to_unit says
    ijk_in = np.round(np.linalg.solve(ct.affine[:3, :3], before - ct.affine[:3, 3])).astype(int)
    ijk_out = np.round(np.linalg.solve(_affine(img)[:3, :3], before - _affine(img)[:3, 3])).astype(int)
    window = ct.array[tuple(slice(i - 1, i + 2) for i in ijk_in)].mean()
    assert unit[tuple(ijk_out)] == pytest.approx(float(hu_to_unit(window)), abs=0.05)


def test_text2ct_preset_on_real_ct_keeps_the_tumour_in_place(sample_dir: Path) -> None:
    """A0002 (LPS, 2.6x2.6x8 mm) -> 512x512x128 at 0.75x0.75x3 mm RAS; the annotated tumour stays a dense mass."""
    path = sample_dir / "ct" / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz"
    box = json.loads((sample_dir / "ct" / "lung_pet_ct_dx_A0002_bbox.json").read_text(encoding="utf-8"))
    centre = (np.asarray(box["bbox_3d_ras_mm"]["min"]) + np.asarray(box["bbox_3d_ras_mm"]["max"])) / 2
    out = build_preprocess(PREPROCESS_PRESETS["text2ct-512"])({"image": str(path)})["image"]
    assert out.shape == (1, 512, 512, 128)
    aff = _affine(out)
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), (0.75, 0.75, 3.0), atol=1e-6)
    src = load_volume(path)
    ijk_src = np.linalg.solve(src.affine[:3, :3], centre - src.affine[:3, 3])
    ijk_out = np.linalg.solve(aff[:3, :3], centre - aff[:3, 3])
    hu_src = ndimage.map_coordinates(src.array.astype(np.float32), ijk_src[:, None], order=1)[0]
    unit_out = ndimage.map_coordinates(out[0].numpy(), ijk_out[:, None], order=1)[0]
    assert hu_src > -300  # the box centre is tumour / soft tissue, not lung
    assert float(unit_to_hu(unit_out)) == pytest.approx(hu_src, abs=60.0)


def test_resize_mode_and_in_memory_input(sample_dir: Path) -> None:
    ct, mask = load_volume(sample_dir / CROP_CT), load_volume(sample_dir / CROP_MASK)
    cfg = PreprocessConfig(spacing=(3.0, 3.0, 3.0), size=(32, 32, 40), resize_mode="resize")
    item = {"image": volume_to_metatensor(ct), "mask": volume_to_metatensor(mask)}
    before = dict(item)
    out = build_preprocess(cfg, mask_keys=["mask"], load=False)(item)
    assert item == before  # input dict untouched
    assert out["image"].shape == (1, 32, 32, 40)
    labels = set(torch.unique(out["mask"]).tolist())
    assert labels <= {0, *np.unique(mask.array).tolist()} and {51, 52} <= labels
    vol = metatensor_to_volume(out["mask"])
    heart_before = _world_centroid(mask.array, mask.affine, mask.array == 51)
    heart_after = _world_centroid(vol.array, vol.affine, vol.array == 51)
    assert np.linalg.norm(heart_before - heart_after) < max(vol.spacing)


def test_raw_values_are_rescaled_per_item(sample_dir: Path, tmp_path: Path) -> None:
    """A CT-RATE-style raw volume (HU + 1024, uint16) preprocesses to the same tensor as the HU original."""
    src = load_volume(sample_dir / CROP_CT)
    raw = (src.array.astype(np.int32) + 1024).astype(np.uint16)
    img = nib.Nifti1Image(raw, src.affine)
    img.set_sform(src.affine, code=1)
    nib.save(img, str(tmp_path / "raw.nii.gz"))
    case = Case(
        "raw",
        "p",
        "train",
        report_findings="x",
        report_source="radiologist",
        volume_path=str(tmp_path / "raw.nii.gz"),
        extra={"rescale": {"slope": 1.0, "intercept": -1024.0}, "rescale_applied": True},
    )
    item = case_to_item(case)
    assert item["hu_slope"] == 1.0 and item["hu_intercept"] == -1024.0
    pipe = build_preprocess(PREPROCESS_PRESETS["tiny-cpu"])
    got = pipe(item)["image"]
    want = pipe({"image": str(sample_dir / CROP_CT)})["image"]
    torch.testing.assert_close(got.as_tensor(), want.as_tensor(), atol=1e-5, rtol=0)
    not_applied = case_to_item(case.evolve(extra={**case.extra, "rescale_applied": False}))
    assert "hu_slope" not in not_applied
    d = {"image": np.array([0.0, 1024.0]), "hu_intercept": -1024.0}
    assert RescaleIntensityd(["image"])(d)["image"].tolist() == [-1024.0, 0.0] and d["image"].tolist() == [0.0, 1024.0]


def test_unit_to_hu_inverts_hu_to_unit() -> None:
    hu = np.array([-1500.0, -1000.0, -250.0, 0.0, 999.0, 2000.0])
    unit = hu_to_unit(hu)
    np.testing.assert_allclose(unit, [0.0, 0.0, 0.375, 0.5, 0.9995, 1.0])
    np.testing.assert_allclose(unit_to_hu(unit), np.clip(hu, -1000, 1000))
    t = torch.tensor([0.0, 0.25, 1.0, 1.2])
    torch.testing.assert_close(UnitToHU()(t), torch.tensor([-1000.0, -500.0, 1000.0, 1000.0]))
    d = {"image": t}
    out = UnitToHUd(["image"], hu_window=(-500.0, 500.0))(d)
    assert out["image"].tolist() == [-500.0, -250.0, 500.0, 500.0] and d["image"] is t
    with pytest.raises(KeyError):
        UnitToHUd(["missing"])(d)


def test_resample_to_grid_reproduces_the_shipped_lowres_mask(sample_dir: Path) -> None:
    """The shipped 128^3 CT-RATE mask is the 512x512x128 one sampled every 4th voxel (offset 1): nearest
    resampling by world coordinates must reproduce it exactly, labels and dtype included."""
    full = load_volume(sample_dir / "ct_rate_nc_sa" / "ragtext2ct_ctrate_chest_mask_total.nii.gz")
    low = load_volume(sample_dir / "ct_rate_nc_sa" / "lowres" / "ragtext2ct_ctrate_chest_mask_total_128.nii.gz")
    out = resample_to_grid(full, low.shape, low.affine, mode="nearest")
    assert out.array.dtype == full.array.dtype
    np.testing.assert_allclose(out.affine, low.affine)
    np.testing.assert_array_equal(out.array, low.array)


def test_resample_to_grid_flips_lps_to_ras_and_fills_outside(sample_dir: Path) -> None:
    mask = load_volume(sample_dir / CROP_MASK)
    shape = np.array(mask.shape)
    # RAS grid covering the same voxels: index i' = n-1-i on the first two axes
    ras_affine = mask.affine @ np.array(
        [[-1, 0, 0, shape[0] - 1], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float
    )
    assert nib.aff2axcodes(ras_affine) == ("R", "A", "S")
    out = resample_to_grid(mask, mask.shape, ras_affine)
    np.testing.assert_array_equal(out.array, mask.array[::-1, ::-1, :])
    ct = load_volume(sample_dir / CROP_CT)
    shifted = ct.affine.copy()
    shifted[2, 3] += 1000.0  # a grid far above the CT: everything outside
    empty = resample_to_grid(ct, (8, 8, 8), shifted, mode="linear", fill=-1000.0)
    assert empty.array.dtype == np.float32 and np.all(empty.array == -1000.0)
    with pytest.raises(InvalidInputError, match="mode"):
        resample_to_grid(ct, (8, 8, 8), shifted, mode="cubic")  # type: ignore[arg-type]


def test_volume_metatensor_roundtrip(sample_dir: Path) -> None:
    vol = load_volume(sample_dir / CROP_MASK)
    back = metatensor_to_volume(volume_to_metatensor(vol))
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.affine, vol.affine)
    assert isinstance(back, Volume)


def test_covering_grid_and_ct_to_space_keep_the_scan_in_world_coordinates(sample_dir: Path) -> None:
    """A real LPS CT onto a 4 mm RAS grid that covers it: same world extent, [0, 1] values, air outside."""
    from ctrag.data.transforms import covering_grid, ct_to_space, direction_matrix, world_bounds, world_center

    ct = load_volume(sample_dir / "ct" / "lowres" / "lung_pet_ct_dx_A0001_ct_128.nii.gz")
    space = load_preprocess_config("tiny-cpu")
    shape, affine = covering_grid(ct, space.spacing, space.orientation, min_shape=(64, 64, 32))
    assert np.allclose(affine[:3, :3], direction_matrix("RAS") * 4.0)
    lo, hi = world_bounds(ct.shape, ct.affine)
    glo, ghi = world_bounds(shape, affine)
    assert np.all(glo <= lo + 1e-6) and np.all(ghi >= hi - 4.0)  # the grid covers the scan (to a voxel)
    assert np.allclose(world_center(shape, affine), world_center(ct.shape, ct.affine), atol=2.0)
    image, image_affine = ct_to_space(ct, space, min_shape=(64, 64, 32))
    assert image.shape == shape and np.allclose(image_affine, affine) and image.dtype == np.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    # the voxel nearest the scan's centre holds (about) the HU the scan has there, mapped to [0, 1]
    centre_ijk = np.rint(np.linalg.solve(affine[:3, :3], world_center(ct.shape, ct.affine) - affine[:3, 3])).astype(int)
    src_ijk = np.rint(np.linalg.solve(ct.affine[:3, :3], world_center(ct.shape, ct.affine) - ct.affine[:3, 3]))
    hu = float(np.asarray(ct.array)[tuple(src_ijk.astype(int))])
    assert abs(image[tuple(centre_ijk)] * 2000.0 - 1000.0 - np.clip(hu, -1000, 1000)) < 300
