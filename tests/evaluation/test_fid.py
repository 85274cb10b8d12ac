"""FID 2.5D / 3D on real shipped CTs: identical sets give ~0, noise is far, slice sampling is as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrag.data.nifti import Volume
from ctrag.errors import ConfigError, InvalidInputError, WeightsNotFoundError
from ctrag.evaluation.features import create_extractor, list_extractors
from ctrag.evaluation.fid import (
    PLANES,
    FIDConfig,
    FIDEvaluator,
    extract_slices,
    frechet_distance,
    slice_positions,
    volume_crops,
)
from ctrag.evaluation.volumes import prepare_volume, to_ras

from .conftest import EVAL_SHAPE


@pytest.fixture(scope="module")
def evaluator() -> FIDEvaluator:
    cfg = FIDConfig(
        extractor_2d="random-resnet2d",
        extractor_3d="random-resnet3d",
        volume_shape=EVAL_SHAPE,
        slice_size=48,
        slices_per_volume=12,
        crops_per_volume=4,
        crop_fraction=0.75,
    )
    return FIDEvaluator.from_config(cfg)


@pytest.fixture(scope="module")
def real_features(evaluator: FIDEvaluator, prepared_real: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return evaluator.features(list(prepared_real.values()))


def _noise_like(volumes: list[Volume]) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    out = []
    for v in volumes:
        noise = rng.uniform(-1000, 1000, size=v.shape).astype(np.float32)
        out.append(prepare_volume(Volume(noise, v.affine), EVAL_SHAPE))
    return out


def test_fid_real_vs_itself_is_zero(evaluator: FIDEvaluator, real_features: dict[str, np.ndarray]) -> None:
    same = evaluator.compare(real_features, real_features)
    for plane in PLANES:
        assert abs(getattr(same, plane)) < 1e-6
    assert same.fid_3d is not None and abs(same.fid_3d) < 1e-6
    assert same.n_real_slices == 4 * 12 and same.n_real_3d == 4 * 4


def test_fid_ranks_other_real_cts_closer_than_noise_or_inverted(
    evaluator: FIDEvaluator, prepared_real: dict[str, np.ndarray], real_volumes: dict[str, Volume]
) -> None:
    """Lung-PET-CT-Dx CTs vs LIDC/TotalSegmentator CTs is closer than vs noise or intensity-inverted CTs."""
    a = evaluator.features([prepared_real["A0001"], prepared_real["A0002"]])
    b_arrays = [prepared_real["LIDC0314"], prepared_real["TS_SM"]]
    real_b = evaluator.compare(a, evaluator.features(b_arrays))
    noise = evaluator.compare(a, evaluator.features(_noise_like([real_volumes["LIDC0314"], real_volumes["TS_SM"]])))
    inverted = evaluator.compare(a, evaluator.features([1.0 - x for x in b_arrays]))
    for plane in PLANES:
        assert getattr(real_b, plane) < getattr(noise, plane)
        assert getattr(real_b, plane) < getattr(inverted, plane)
    assert real_b.fid_3d is not None and noise.fid_3d is not None
    assert real_b.fid_3d < noise.fid_3d
    assert noise.average == pytest.approx(np.mean([noise.axial, noise.coronal, noise.sagittal]))


def test_frechet_distance_matches_closed_form_for_gaussians() -> None:
    """For N(0, I) vs N(m, I) the Fréchet distance is |m|^2; large samples get close."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    b = rng.standard_normal((4000, 3)) + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=0.05)


def test_torchmetrics_and_monai_backends_agree_on_rank_deficient_features(real_features) -> None:
    """Fewer slices than feature dimensions (singular covariances), as in small evaluations."""
    real, other = real_features["axial"][:24], real_features["axial"][24:]
    tm = frechet_distance(real, other)
    mo = frechet_distance(real, other, backend="monai")
    assert real.shape[0] < real.shape[1]
    assert tm == pytest.approx(mo, rel=1e-4)


def test_frechet_distance_rejects_too_few_samples() -> None:
    with pytest.raises(InvalidInputError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(InvalidInputError, match="equal d"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


def test_slice_sampling_is_central_even_and_planes_are_ras(real_volumes: dict[str, Volume]) -> None:
    assert slice_positions(101, 5, 0.8).tolist() == [10, 30, 50, 70, 90]
    # An LPS volume reoriented to RAS: axial slices are k-slices, coronal j, sagittal i.
    vol = real_volumes["A0002"]
    assert vol.orientation == "LPS"
    ras = to_ras(vol)
    assert ras.orientation == "RAS"
    np.testing.assert_allclose(ras.array[::-1, ::-1, :], vol.array)
    arr = np.zeros((10, 20, 30), dtype=np.float32)
    arr[3, :, :] = 1.0  # one sagittal plane
    sag = extract_slices(arr, "sagittal", 10, 1.0, 30)
    assert sag.shape == (10, 1, 30, 30)
    assert float(sag[3].sum()) > 0 and float(sag[2].sum()) == 0
    ax = extract_slices(arr, "axial", 4, 1.0, 20)
    # A 10x20 axial slice is padded to 20x20 with air (0) before resizing: rows 0-4 and 15-19 are padding.
    assert float(ax[0, 0, :5].sum()) == 0 and float(ax[0, 0, 5 + 3].sum()) == 20


def test_volume_crops_are_distinct_and_fixed() -> None:
    arr = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    crops = volume_crops(arr, 3, 0.5)
    assert crops.shape == (3, 1, 4, 4, 4)
    assert torch.equal(crops[0, 0], torch.from_numpy(arr[2:6, 2:6, 2:6]))
    assert not torch.equal(crops[1], crops[2])
    with pytest.raises(InvalidInputError):
        volume_crops(arr, 100, 0.5)


def test_registry_is_explicit_about_weights_and_fallbacks(tmp_path) -> None:
    assert {"random-resnet2d", "radimagenet-resnet50", "ctnet-slice"} <= set(list_extractors(2))
    assert {"random-resnet3d", "medicalnet-resnet10", "medicalnet-resnet50", "ctnet-volume"} <= set(list_extractors(3))
    with pytest.raises(WeightsNotFoundError, match="random-resnet2d"):
        create_extractor("ctnet-slice")
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_extractor("radimagenet-resnet50", tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="known"):
        create_extractor("inception-v3")
    with pytest.raises(ConfigError, match="takes no weights"):
        create_extractor("random-resnet2d", tmp_path)
    fallback = create_extractor("random-resnet2d")
    assert fallback.fingerprint.startswith("random-fallback")
    # Same seed, same features: the fallback is reproducible without touching global RNG state.
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    state = torch.random.get_rng_state()
    np.testing.assert_array_equal(fallback(x), create_extractor("random-resnet2d")(x))
    assert torch.equal(state, torch.random.get_rng_state())


def test_evaluator_rejects_wrong_shapes(evaluator: FIDEvaluator) -> None:
    with pytest.raises(InvalidInputError, match="prepared"):
        evaluator.features([np.zeros((10, 10, 10), dtype=np.float32)])


def test_volumes_are_cut_from_the_given_image_space(evaluator: FIDEvaluator, real_volumes) -> None:
    """FID of a tiny-grid generator compares real and generated CTs over the generator's field of view (the
    preset's image space), and the feature fingerprint says which one."""
    from ctrag.data.transforms import PreprocessConfig

    small = PreprocessConfig(spacing=(4.0, 4.0, 4.0), size=(64, 64, 32))
    other = FIDEvaluator(evaluator.config, evaluator.extractor_2d, evaluator.extractor_3d, small)
    ct = real_volumes["A0001"]
    np.testing.assert_allclose(other.prepare(ct), prepare_volume(ct, EVAL_SHAPE, space=small), atol=1e-6)
    assert not np.allclose(other.prepare(ct), evaluator.prepare(ct), atol=1e-3)
    assert other.fingerprints["field_of_view_mm"] == "256x256x128"
    assert evaluator.fingerprints["field_of_view_mm"] == "384x384x384"
