"""Other methods' outputs scored as extra rows: the shipped real CTs play "another method's" generated volumes.

Copies of the evaluated real CTs are the one external output whose correct scores are known without a generator:
FID against the real side is zero and the classifier reads the same probabilities as on the real row, whichever
way the file stores its axes. A copy re-stored with its first axis reversed (and the affine saying so) must
therefore score exactly like the original, while a true left-right mirror (array reversed, affine kept) must not
be "corrected". A truncated file and a missing (case, seed) row are listed, not silently dropped.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctrag.data.case import Case
from ctrag.data.nifti import Volume, load_volume, save_volume
from ctrag.errors import ConfigError, DataValidationError, InvalidInputError
from ctrag.evaluation.ablation import AblationRunner, select_cases
from ctrag.evaluation.external import (
    EXTERNAL_LEGEND,
    load_external_table,
    load_external_volume,
    parse_external_spec,
)
from ctrag.evaluation.fid import FIDConfig, FIDEvaluator
from ctrag.evaluation.generation_config import GenerationEvalConfig
from ctrag.evaluation.tables import write_ablation_outputs
from ctrag.evaluation.volumes import prepare_volume
from tests.evaluation.test_ablation import HistogramExtractor, MeanHUClassifier

SEEDS = (0, 1)


def world_band_segmenter(volume: Volume) -> Volume:
    """Coarse labels from HU bands with the lungs split at the volume's world x centre (RAS: +x = patient left),
    so the labels follow the patient, not the array axes."""
    hu = np.asarray(volume.array, dtype=np.float32)
    out = np.zeros(hu.shape, dtype=np.uint8)
    out[(hu > -500) & (hu <= 200)] = 1
    lung = (hu > -950) & (hu <= -500)
    ijk = np.indices(hu.shape).reshape(3, -1).astype(np.float64)
    x = (volume.affine[0, :3] @ ijk + volume.affine[0, 3]).reshape(hu.shape)
    centre = float((x.min() + x.max()) / 2)
    out[lung & (x <= centre)] = 2  # patient right
    out[lung & (x > centre)] = 3
    out[hu > 200] = 5
    return volume.with_array(out)


def _case(case_id: str, patient: str, volume: Path, mask: Path | None = None, **kw: Any) -> Case:
    return Case(
        case_id=case_id,
        patient_id=patient,
        split="test",
        report_findings=f"Annotation-derived description of {case_id}.",
        report_source="annotation-derived",
        volume_path=str(volume),
        mask_path=str(mask) if mask else None,
        mask_source="totalsegmentator-total" if mask else None,
        **kw,
    )


@pytest.fixture(scope="module")
def cases(sample_dir: Path) -> list[Case]:
    ct = sample_dir / "ct"
    lab_a, lab_b = [0] * 18, [0] * 18
    lab_a[0], lab_b[1] = 1, 1
    return [
        _case("A0002", "Lung_Dx-A0002", ct / "lowres/lung_pet_ct_dx_A0002_ct_128.nii.gz", labels=tuple(lab_a)),
        _case(
            "ts_sm",
            "ts_example",
            ct / "lowres/ts_example_ct_sm_3mm.nii.gz",
            ct / "lowres/ts_example_ct_sm_3mm_seg_total.nii.gz",
            labels=tuple(lab_b),
        ),
    ]


def _flip_storage(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The same CT stored with axis 0 reversed; the affine moves with it, so every voxel keeps its world place."""
    n = volume.shape[0]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, n - 1
    return np.ascontiguousarray(np.asarray(volume.array)[::-1]), volume.affine @ flip


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def external_dir(tmp_path_factory, cases: list[Case]) -> Path:
    """Two "methods": Copy (text-only, real CTs re-stored flipped, one truncated file, one missing row, one row for
    a case not evaluated) and CopyGT (conditioned on the cases' own masks, real CTs as they are)."""
    root = tmp_path_factory.mktemp("external")
    (root / "copy").mkdir()
    copy_rows, gt_rows = [], []
    for case in cases:
        vol = load_volume(case.volume_path)
        arr, aff = _flip_storage(vol)
        for seed in SEEDS:
            if (case.case_id, seed) == ("A0002", 1):
                continue  # the missing row
            name = f"{case.case_id}_s{seed}.nii.gz"  # relative to the CSV's folder
            save_volume(root / "copy" / name, arr, aff)
            copy_rows.append({"case_id": case.case_id, "seed": str(seed), "path": name})
            gt_rows.append({"case_id": case.case_id, "seed": str(seed), "path": str(case.volume_path), "mask": "gt"})
    gt_rows.append({"case_id": "A0002", "seed": "1", "path": str(cases[0].volume_path), "mask": "gt"})
    # ts_sm seed 1 of Copy: a truncated gzip, as a crashed export leaves it.
    good = (root / "copy/ts_sm_s1.nii.gz").read_bytes()
    (root / "copy/ts_sm_s1.nii.gz").write_bytes(good[: len(good) // 3])
    copy_rows.append({"case_id": "not_evaluated", "seed": "0", "path": "A0002_s0.nii.gz"})
    _write_csv(root / "copy/outputs.csv", copy_rows)
    _write_csv(root / "gt.csv", gt_rows)
    return root


def _fid() -> FIDEvaluator:
    cfg = FIDConfig(volume_shape=(32, 32, 16), slice_size=32, slices_per_volume=8, crops_per_volume=4)
    return FIDEvaluator(cfg, HistogramExtractor(2), HistogramExtractor(3))


@pytest.fixture(scope="module")
def external_run(tmp_path_factory, cases: list[Case], external_dir: Path) -> tuple[Any, dict[str, Path]]:
    out = tmp_path_factory.mktemp("external_out")
    config = GenerationEvalConfig(
        methods=(),
        external={"Copy": str(external_dir / "copy/outputs.csv"), "CopyGT": str(external_dir / "gt.csv")},
        reference_method="CopyGT",
        seeds=SEEDS,
        n_bootstrap=200,
        figure_cases=1,
    )
    runner = AblationRunner(
        config,
        None,  # no generator: only external rows
        segmenter=world_band_segmenter,
        segmenter_name="world-band test segmenter",
        generator_id="none",
        cache_dir=out / "generated",
        classifier=MeanHUClassifier(),
        fid=_fid(),
    )
    result = runner.run(select_cases(cases, config))
    return result, write_ablation_outputs(result, out, command="ctrag evaluate generation --methods Copy,CopyGT")


def test_parse_table_resolves_relative_paths_and_refuses_bad_rows(tmp_path: Path, external_dir: Path) -> None:
    table = load_external_table("Copy", external_dir / "copy/outputs.csv")
    row = table.rows[("ts_sm", 0)]
    assert row.path == (external_dir / "copy/ts_sm_s0.nii.gz").resolve() and row.mask is None
    assert not table.conditioned and load_external_table("CopyGT", external_dir / "gt.csv").conditioned
    assert parse_external_spec("MAISI=out/m.csv") == ("MAISI", "out/m.csv")
    for spec in ("MAISI", "=x.csv", "bad name=x.csv"):
        with pytest.raises(InvalidInputError):
            parse_external_spec(spec)
    dup = _write_csv(tmp_path / "dup.csv", [{"case_id": "a", "seed": "0", "path": "x"}] * 2)
    with pytest.raises(InvalidInputError, match="lines 2 and 3 both give case a seed 0"):
        load_external_table("X", dup)
    bad_seed = _write_csv(tmp_path / "seed.csv", [{"case_id": "a", "seed": "one", "path": "x"}])
    with pytest.raises(InvalidInputError, match="seed 'one' is not an integer"):
        load_external_table("X", bad_seed)
    no_path = _write_csv(tmp_path / "cols.csv", [{"case_id": "a", "seed": "0", "file": "x"}])
    with pytest.raises(InvalidInputError, match="missing column"):
        load_external_table("X", no_path)


def test_volume_checks_refuse_export_formats_not_poor_images(tmp_path: Path, lowres_chest_ct: Path) -> None:
    vol = load_volume(lowres_chest_ct)
    hu = np.asarray(vol.array, dtype=np.float32)
    save_volume(tmp_path / "unit.nii.gz", (np.clip(hu, -1000, 1000) + 1000) / 2000, vol.affine)
    with pytest.raises(DataValidationError, match="look normalised"):
        load_external_volume(tmp_path / "unit.nii.gz")
    save_volume(tmp_path / "u8.nii.gz", np.clip((hu + 1000) / 8, 0, 255).astype(np.uint8), vol.affine)
    with pytest.raises(DataValidationError, match="no negative values"):
        load_external_volume(tmp_path / "u8.nii.gz")
    tiny = vol.affine.copy()
    tiny[:3, :3] *= 0.01
    save_volume(tmp_path / "tiny.nii.gz", hu, tiny)
    with pytest.raises(DataValidationError, match="spacing"):
        load_external_volume(tmp_path / "tiny.nii.gz")
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    with pytest.raises(DataValidationError):
        load_external_volume(tmp_path / "cut.nii.gz")
    # An implausible but HU-valued image (no air anywhere) is scored, not refused: a poor generator is a result.
    save_volume(tmp_path / "soft.nii.gz", np.full(hu.shape, 40.0, np.float32) + (hu > 0) * -60.0, vol.affine)
    assert load_external_volume(tmp_path / "soft.nii.gz").meta["external"]


def test_reoriented_copy_prepares_identically_and_a_mirror_is_not_corrected(cases: list[Case]) -> None:
    vol = load_volume(cases[1].volume_path)
    arr, aff = _flip_storage(vol)
    original = prepare_volume(vol, (32, 32, 16))
    np.testing.assert_allclose(prepare_volume(Volume(arr, aff), (32, 32, 16)), original, atol=1e-5)
    mirrored = prepare_volume(Volume(arr, vol.affine), (32, 32, 16))  # array reversed, affine kept: a real mirror
    assert np.abs(mirrored - original).max() > 0.1
    np.testing.assert_allclose(mirrored, original[::-1], atol=1e-5)


def test_external_copies_of_real_cts_score_like_the_real_row(external_run) -> None:
    result, _ = external_run
    copy, copy_gt = result.methods["Copy"], result.methods["CopyGT"]
    # FID of the real CTs against themselves (re-stored flipped): zero on every seed that has both cases.
    seed0 = next(r for r in result.per_seed if r["method"] == "Copy" and r["seed"] == 0)
    assert seed0["n_scored"] == 2 and seed0["fid_avg"] == pytest.approx(0.0, abs=1e-3)
    assert seed0["fid_3d"] == pytest.approx(0.0, abs=1e-3)
    # The classifier reads the same volumes: the clinical scores equal the Real row's.
    for key in ("auc_macro", "precision_macro"):
        assert seed0[key] == pytest.approx(result.real["metrics"][key]["mean"])
    # Text-only external: spatial scores do not apply; conditioned on the case's own mask: they do.
    assert {"dice", "hd95"} <= set(copy["not_applicable"]) and "dice" not in copy["metrics"]
    assert "not_applicable" not in copy_gt
    # ts_sm's Dice vs its own TotalSegmentator mask equals the Real row's (same CT, same mask, same segmenter).
    gt_ts = [r for r in result.per_case if r["method"] == "CopyGT" and r["case_id"] == "ts_sm"]
    real_ts = next(c for c in result.real["spatial_cases"] if c["case_id"] == "ts_sm")
    assert len(gt_ts) == len(SEEDS)
    for name, value in real_ts["dice"].items():
        assert gt_ts[0][f"dice_{name}"] == pytest.approx(value, nan_ok=True), name
    assert 0.3 < gt_ts[0]["dice"] < 1.0  # the segmenter is not the mask's TotalSegmentator: not trivially 1


def test_missing_rows_and_unreadable_files_are_listed_not_dropped(external_run) -> None:
    result, paths = external_run
    ext = result.methods["Copy"]["external"]
    assert ext["missing"] == ["A0002/seed1"] and ext["scored"] == 2 and ext["ignored_rows"] == 1
    assert len(ext["unreadable"]) == 1 and ext["unreadable"][0]["path"].endswith("ts_sm_s1.nii.gz")
    assert "truncated" in ext["unreadable"][0]["error"]
    seed1 = next(r for r in result.per_seed if r["method"] == "Copy" and r["seed"] == 1)
    assert seed1["n_scored"] == 0  # both of seed 1's volumes are gone: said, not averaged over nothing
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "1 (case, seed) pair(s) have no row in the CSV" in md and "A0002/seed1" in md
    assert "1 file(s) unreadable or invalid, skipped" in md and "ts_sm_s1.nii.gz" in md
    assert "seed 1 has no scored volume" in md and "1 CSV row(s) for cases or seeds outside" in md


def test_tables_mark_external_rows_and_name_the_segmenter(external_run) -> None:
    _, paths = external_run
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "| Copy † |" in md and "| CopyGT † |" in md
    assert md.count(EXTERNAL_LEGEND) >= 4  # below every table
    assert "## Table 3: spatial controllability (segmenter: world-band test segmenter)" in md
    with open(paths["csv"], encoding="utf-8") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert rows["Copy"]["source"] == "external" and rows["real"]["source"] == "real"
    assert rows["Copy"]["dice"] == "" and rows["CopyGT"]["dice"] != ""
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert data["provenance"]["segmenter"] == "world-band test segmenter"
    assert set(data["provenance"]["external"]) == {"Copy", "CopyGT"}
    with open(paths["per_case"], encoding="utf-8") as fh:
        per_case = list(csv.DictReader(fh))
    assert all(r["source"].endswith(".nii.gz") for r in per_case)
    assert (paths["json"].parent / "figures/grid_Copy.png").is_file()


def test_config_rules_for_external_rows(tmp_path: Path, cases: list[Case]) -> None:
    with pytest.raises(ConfigError, match=r"non-empty unless evaluation\.external"):
        GenerationEvalConfig(methods=())
    with pytest.raises(ConfigError, match="ctrag's own methods"):
        GenerationEvalConfig(external={"nearest": "x.csv"})
    with pytest.raises(ConfigError, match="reference_method 'nearest'"):
        GenerationEvalConfig(methods=(), external={"GenerateCT": "x.csv"})
    with pytest.raises(ConfigError, match="need a generator"):
        AblationRunner(
            GenerationEvalConfig(), None, segmenter=world_band_segmenter, generator_id="x", cache_dir=tmp_path
        )
    # Every (case, seed) unusable: refused with the first reason, not a table of n/a.
    bad = _write_csv(tmp_path / "bad.csv", [{"case_id": "A0002", "seed": "0", "path": "nope.nii.gz"}])
    config = GenerationEvalConfig(methods=(), external={"Bad": str(bad)}, reference_method="Bad", seeds=(0,))
    runner = AblationRunner(config, None, segmenter=world_band_segmenter, generator_id="x", cache_dir=tmp_path)
    with pytest.raises(InvalidInputError, match=r"external method Bad: no usable volume.*file not found"):
        runner.run(select_cases(cases, config))
