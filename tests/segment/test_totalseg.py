"""TotalSegmentator backend without the real package: weights discovery, wiring, grids, label checks, errors.

The package and its weights are not installed here, so the backend call is replaced by a function the test
provides; it hands back the *real* TotalSegmentator mask shipped with the test CT (in another orientation, as
TotalSegmentator's resampling could), so everything around the call runs on real data.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import ctrag.segment.totalseg as ts_mod
from ctrag.data.labels import to_coarse
from ctrag.data.nifti import Volume
from ctrag.errors import CtragError, DataValidationError, MissingDependencyError, WeightsNotFoundError
from ctrag.segment import (
    SegmentConfig,
    TotalSegConfig,
    TotalSegRequest,
    run_totalsegmentator,
    segment_volume,
    totalsegmentator_available,
    totalsegmentator_status,
)
from ctrag.segment.totalseg import TOTAL_DATASETS, find_results_dir

FAST_DATASET = "Dataset297_TotalSegmentator_total_3mm_1559subj"


def make_weights(home: Path, *, fast: bool = True, empty: bool = False) -> Path:
    """A TOTALSEG_HOME_DIR-style tree with (tiny) checkpoint files where TotalSegmentator keeps them."""
    for name in TOTAL_DATASETS[fast]:
        fold = home / "nnunet" / "results" / name / "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"
        (fold / "fold_0").mkdir(parents=True)
        (fold / "fold_0" / "checkpoint_final.pth").write_bytes(b"" if empty else b"\x00" * 64)
    return home


def to_lps(img_array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """Same labels in LPS storage order (i and j flipped), as a backend might return them."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = img_array.shape[0] - 1, img_array.shape[1] - 1
    return nib.Nifti1Image(img_array[::-1, ::-1, :].copy(), affine @ flip)


class FakeBackend:
    """Records the request and returns the shipped TotalSegmentator mask of the test CT, reoriented to LPS."""

    def __init__(self, mask: Volume) -> None:
        self.mask = mask
        self.calls: list[TotalSegRequest] = []

    def __call__(self, image: nib.Nifti1Image, request: TotalSegRequest) -> nib.Nifti1Image:
        self.calls.append(request)
        assert image.shape == self.mask.shape
        np.testing.assert_allclose(image.affine, self.mask.affine)
        return to_lps(self.mask.array, self.mask.affine)


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    return make_weights(tmp_path / "totalseg_home")


def test_status_names_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ts_mod, "HAS_TOTALSEGMENTATOR", False)
    status = totalsegmentator_status(None)
    assert not status.available
    assert "'totalsegmentator' is not installed" in status.reason() and "no weights directory" in status.reason()
    assert "does not exist" in totalsegmentator_status(tmp_path / "nope").reason()
    empty = make_weights(tmp_path / "empty", empty=True)
    status = totalsegmentator_status(empty)
    assert status.missing == (FAST_DATASET,) and FAST_DATASET in status.reason()
    full = totalsegmentator_status(make_weights(tmp_path / "fast_only"), fast=False)
    assert len(full.missing) == 5 and "Dataset291_TotalSegmentator_part1_organs_1559subj" in full.missing


def test_weights_found_in_home_or_results_layout(weights: Path, monkeypatch) -> None:
    monkeypatch.setattr(ts_mod, "HAS_TOTALSEGMENTATOR", True)
    assert find_results_dir(weights) == weights / "nnunet" / "results"
    assert find_results_dir(weights / "nnunet" / "results") == weights / "nnunet" / "results"
    assert totalsegmentator_available(weights) and totalsegmentator_available(weights / "nnunet" / "results")
    assert not totalsegmentator_available(weights, fast=False)


def test_runs_backend_and_maps_labels_back_to_input_grid(cts, ts_masks, weights: Path) -> None:
    ct, mask = cts["ts_sm"], ts_masks["ts_sm"]
    backend = FakeBackend(mask)
    cfg = TotalSegConfig(weights_dir=weights, fast=True, device="cuda:1")
    out = run_totalsegmentator(ct, cfg, backend=backend)
    (request,) = backend.calls
    assert request.fast and request.task == "total" and request.device == "cuda:1"
    assert request.results_dir == weights / "nnunet" / "results" and request.home_dir == weights
    assert out.shape == ct.shape and out.array.dtype == np.uint8
    np.testing.assert_allclose(out.affine, ct.affine)
    np.testing.assert_array_equal(out.array, mask.array)  # LPS answer mapped back exactly
    assert out.meta["method"] == "totalsegmentator" and out.meta["resampled_from_shape"] == list(mask.shape)


def test_segment_volume_total_and_coarse_agree_with_classical(cts, ts_masks, classical, weights, measure) -> None:
    ct, mask = cts["ts_sm"], ts_masks["ts_sm"]
    total = segment_volume(
        ct,
        SegmentConfig(method="totalsegmentator", labels="total", totalseg=TotalSegConfig(weights_dir=weights)),
        backend=FakeBackend(mask),
    )
    np.testing.assert_array_equal(total.array, mask.array)
    assert total.meta["label_names"][10] == "lung_upper_lobe_left"
    coarse = segment_volume(
        ct,
        SegmentConfig(method="totalsegmentator", totalseg=TotalSegConfig(weights_dir=weights)),
        backend=FakeBackend(mask),
    )
    assert coarse.meta["labels"] == "coarse"
    # Lungs, airway and bone come from TotalSegmentator; body from the classical body mask of the same CT.
    np.testing.assert_array_equal(coarse.array[mask.array > 0], to_coarse(mask.array)[mask.array > 0])
    body = coarse.array > 0
    assert measure.dice(body, classical["ts_sm"].array > 0) > 0.99
    for label in (2, 3):
        assert measure.dice(coarse.array == label, classical["ts_sm"].array == label) > 0.92


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda m: nib.Nifti1Image(np.where(m.array > 0, 200, 0).astype(np.uint8), m.affine), "unknown label ids"),
        (lambda m: nib.Nifti1Image(m.array.astype(np.float32) + 0.5, m.affine), "integer labels"),
        (lambda m: nib.Nifti1Image(m.array[:, :, 0], m.affine), "2-D labels"),
        (lambda m: m.array, "expected a nibabel image"),
    ],
)
def test_bad_backend_output_is_refused(returned, message, cts, ts_masks, weights) -> None:
    mask = ts_masks["ts_sm"]
    with pytest.raises(DataValidationError, match=message):
        run_totalsegmentator(cts["ts_sm"], TotalSegConfig(weights_dir=weights), backend=lambda img, req: returned(mask))


def test_unavailable_is_a_clear_error_not_an_import_traceback(cts, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ts_mod, "HAS_TOTALSEGMENTATOR", False)
    cfg = SegmentConfig(method="totalsegmentator", totalseg=TotalSegConfig(weights_dir=tmp_path))
    with pytest.raises(MissingDependencyError, match="'totalsegmentator' is not installed") as err:
        segment_volume(cts["A0002"], cfg)
    assert isinstance(err.value, CtragError) and err.value.exit_code == 2
    # With a backend but without weights: the missing folder is named and nothing is called.
    with pytest.raises(WeightsNotFoundError, match=FAST_DATASET):
        segment_volume(cts["A0002"], cfg, backend=lambda img, req: pytest.fail("backend must not run"))


def test_package_backend_wiring_with_a_stand_in_module(cts, ts_masks, weights: Path, monkeypatch) -> None:
    """The real call path: env vars set only during the call, device mapped, usage statistics switched off."""
    seen: dict[str, object] = {}
    mask = ts_masks["ts_sm"]

    def fake_totalsegmentator(image, output, **kwargs):
        seen.update(kwargs, output=output, env_weights=os.environ.get("TOTALSEG_WEIGHTS_PATH"))
        seen["env_home"] = os.environ.get("TOTALSEG_HOME_DIR")
        return nib.Nifti1Image(mask.array, mask.affine)

    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = fake_totalsegmentator  # type: ignore[attr-defined]
    pkg = types.ModuleType("totalsegmentator")
    pkg.python_api = api  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "totalsegmentator", pkg)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.setattr(ts_mod, "HAS_TOTALSEGMENTATOR", True)
    monkeypatch.delenv("TOTALSEG_HOME_DIR", raising=False)
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)

    out = run_totalsegmentator(cts["ts_sm"], TotalSegConfig(weights_dir=weights, fast=True, device="cuda"))
    np.testing.assert_array_equal(out.array, mask.array)
    assert seen["output"] is None and seen["ml"] is True and seen["task"] == "total" and seen["fast"] is True
    assert seen["device"] == "gpu"  # TotalSegmentator's name for CUDA
    assert seen["env_weights"] == str(weights / "nnunet" / "results") and seen["env_home"] == str(weights)
    assert "TOTALSEG_HOME_DIR" not in os.environ and "TOTALSEG_WEIGHTS_PATH" not in os.environ
    config = json.loads((weights / "config.json").read_text())
    assert config["send_usage_stats"] is False
