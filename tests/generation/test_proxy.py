"""The proxy trip: retrieve a training case, take its mask, put it on the generation grid in the ControlNet's labels."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.data.labels import COARSE_LABELS
from ctrag.data.nifti import Volume, load_volume
from ctrag.data.transforms import grid_affine, load_preprocess_config, resample_to_grid
from ctrag.errors import DataValidationError, InvalidInputError
from ctrag.generation.proxy import (
    default_grid,
    load_retriever,
    load_user_mask,
    mask_vocabulary,
    place_on_grid,
    proxy_center,
    retrieve_proxy,
)
from tests.generation.conftest import SAMPLE

CTRATE_MASK = SAMPLE / "ct_rate_nc_sa" / "ragtext2ct_ctrate_chest_mask_total.nii.gz"


def test_mask_on_another_grid_is_resampled_nearest_and_keeps_labels() -> None:
    """The full-resolution CT-RATE mask (512x512x128, 0.75 mm) onto a 5 mm RAS grid: no new label appears."""
    mask = load_volume(CTRATE_MASK)
    src_labels = set(np.unique(mask.array).tolist())
    space = load_preprocess_config("tiny-cpu")
    lo = mask.affine[:3, :3] @ (np.array(mask.shape) / 2.0) + mask.affine[:3, 3]
    affine = grid_affine(lo, (64, 64, 32), space.spacing, "RAS")
    out = np.asarray(resample_to_grid(mask, (64, 64, 32), affine, mode="nearest", fill=0).array)
    assert out.dtype == mask.array.dtype and out.shape == (64, 64, 32)
    out_labels = set(np.unique(out).tolist())
    assert out_labels <= src_labels and len(out_labels) > 20
    # a voxel's label is the source label at the nearest source voxel of its world position
    ijk = np.array([40, 30, 16])
    world = affine[:3, :3] @ ijk + affine[:3, 3]
    src = np.rint(np.linalg.solve(mask.affine[:3, :3], world - mask.affine[:3, 3])).astype(int)
    assert out[tuple(ijk)] == mask.array[tuple(src)]


def test_retrieved_proxy_is_a_training_case_on_the_output_grid(gen_index, text_encoder, val_reports) -> None:  # type: ignore[no-untyped-def]
    retriever = load_retriever(gen_index, text_encoder, "cpu")
    space = load_preprocess_config("tiny-cpu")
    hit = retrieve_proxy(retriever, val_reports[0], "nearest", 0, proxy_from="case-or-segment", label_set="coarse")
    assert hit.record["case_id"] != "lidc_idri_0314" and hit.record["strategy"] == "nearest"
    assert hit.vocabulary in ("coarse", "totalseg") and hit.mask.array.ndim == 3
    proxy = place_on_grid(hit.mask, hit.vocabulary, (64, 64, 32), space, "coarse", source="retrieval", body=hit.body)
    assert proxy.labels.shape == (64, 64, 32) and set(np.unique(proxy.labels).tolist()) <= {0, *COARSE_LABELS}
    assert np.allclose(np.linalg.norm(proxy.affine[:3, :3], axis=0), space.spacing)
    # the grid is centred on the proxy's lungs
    lungs = np.isin(proxy.labels, (2, 3))
    assert lungs.any()
    centre = [float(np.mean(np.flatnonzero(lungs.any(axis=tuple(a for a in range(3) if a != ax))))) for ax in range(3)]
    assert np.allclose(centre, [31.5, 31.5, 15.5], atol=4.0)
    far = retrieve_proxy(retriever, val_reports[0], "farthest", 0, proxy_from="case-or-segment", label_set="coarse")
    assert far.record["case_id"] != hit.record["case_id"]


def test_proxy_centre_modes_and_default_grid() -> None:
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 2  # lung_left in a corner
    labels[6:9, 6:9, 6:9] = 5  # bone elsewhere
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    assert np.allclose(proxy_center(labels, affine, "coarse", "lungs"), [3.0, 3.0, 3.0])
    assert np.allclose(proxy_center(labels, affine, "coarse", "foreground"), [9.0, 9.0, 9.0])
    assert np.allclose(proxy_center(labels, affine, "coarse", "volume"), [9.0, 9.0, 9.0])
    space = load_preprocess_config("tiny-cpu")
    grid = default_grid((64, 64, 32), space)
    assert np.allclose(grid[:3, :3] @ np.array([31.5, 31.5, 15.5]) + grid[:3, 3], 0.0)


def test_user_masks_are_checked_and_their_vocabulary_read() -> None:
    mask = load_volume(CTRATE_MASK)
    assert mask_vocabulary(mask, "auto") == "totalseg" and mask_vocabulary(mask, "coarse") == "coarse"
    assert load_user_mask(CTRATE_MASK, "auto").shape == mask.shape
    with pytest.raises(InvalidInputError, match="mask_labels"):
        load_user_mask(CTRATE_MASK, "organs")
    with pytest.raises(InvalidInputError, match="3-D"):
        load_user_mask(Volume(array=np.zeros((4, 4, 4, 2), dtype=np.uint8), affine=np.eye(4)), "coarse")
    with pytest.raises(DataValidationError, match="unknown label ids"):
        load_user_mask(Volume(array=np.full((4, 4, 4), 9, dtype=np.uint8), affine=np.eye(4)), "coarse")
