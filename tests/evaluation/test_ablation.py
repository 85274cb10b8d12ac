"""Ablation runner end to end with a stand-in generator: tables, significance, resume, leakage refusal.

The generator here follows ``GenerationPipeline.__call__``'s contract (keywords, ``GenerationResult``) but paints
HU values onto its proxy mask instead of sampling a diffusion model, so the runner's logic can be checked in
seconds: RAG-Random is built to be identical to RAG-Nearest (must not be marked), RAG-Farthest to follow its
proxy badly (must be marked). Proxies are real TotalSegmentator masks and the evaluated CTs are real shipped CTs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from ctrag.data.case import Case
from ctrag.data.labels import CT_RATE_LABELS, to_coarse
from ctrag.data.nifti import Volume, load_volume
from ctrag.errors import LeakageError
from ctrag.evaluation.ablation import AblationRunner, select_cases, select_report_cases
from ctrag.evaluation.features import FeatureExtractor
from ctrag.evaluation.fid import FIDConfig, FIDEvaluator
from ctrag.evaluation.generation_config import GenerationEvalConfig
from ctrag.evaluation.tables import write_ablation_outputs
from ctrag.generation.pipeline import GenerationResult
from ctrag.index.case_index import CaseIndex

NODULE = CT_RATE_LABELS.index("Lung nodule")
EMPHYSEMA = CT_RATE_LABELS.index("Emphysema")
SEEDS = (0, 1, 2, 3, 4)


class HistogramExtractor(FeatureExtractor):
    """Intensity histogram + mean/std: a cheap, deterministic feature extractor for runner tests."""

    def __init__(self, spatial_dims: int) -> None:
        self.spatial_dims = spatial_dims
        self.name = f"histogram-{spatial_dims}d"

    @property
    def dim(self) -> int:
        return 18

    @property
    def fingerprint(self) -> str:
        return self.name

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        flat = batch.flatten(1)
        hist = torch.stack([torch.histc(x, bins=16, min=0.0, max=1.0) / x.numel() for x in flat])
        return torch.cat([hist, flat.mean(1, keepdim=True), flat.std(1, keepdim=True)], dim=1)


def band_segmenter(volume: Volume) -> Volume:
    """Coarse labels from HU bands (body, lungs split at the array midline, bone): fast and deterministic."""
    hu = np.asarray(volume.array, dtype=np.float32)
    out = np.zeros(hu.shape, dtype=np.uint8)
    out[(hu > -500) & (hu <= 200)] = 1
    lung = (hu > -950) & (hu <= -500)
    half = hu.shape[0] // 2
    out[:half][lung[:half]] = 2
    out[half:][lung[half:]] = 3
    out[hu > 200] = 5
    return volume.with_array(out)


PAINT_HU = {0: -1000.0, 1: 40.0, 2: -800.0, 3: -800.0, 4: -1000.0, 5: 700.0}


def _downsample(mask: Volume, step: int) -> Volume:
    affine = mask.affine.copy()
    affine[:3, :3] *= step
    return Volume(np.ascontiguousarray(np.asarray(mask.array)[::step, ::step, ::step]), affine)


class Painter:
    """Stand-in for ``GenerationPipeline``: retrieval by a fixed table, HU painted from the proxy + seeded noise."""

    def __init__(self, proxies: dict[str, tuple[str, Volume]], leak_case: str | None = None) -> None:
        self.proxies = proxies  # strategy -> (retrieved train case id, coarse proxy)
        self.calls = 0
        self.leak_case = leak_case

    def __call__(self, report: str, *, strategy: str, mask: Volume | None, mask_labels: str, seed: int, **_: Any):
        self.calls += 1
        rng = np.random.default_rng(seed)
        retrieved: list[dict[str, Any]] = []
        if mask is not None:
            proxy = _downsample(mask, 4)
        elif strategy != "none":
            case_id, proxy = self.proxies[strategy]
            retrieved = [{"case_id": self.leak_case or case_id, "score": 0.5, "rank": 0, "strategy": strategy}]
        else:
            proxy = None
        if proxy is None:
            shape, affine = (32, 32, 16), np.diag([8.0, 8.0, 12.0, 1.0])
            volume = rng.normal(0.0, 300.0, size=shape)
            labels = None
        else:
            labels = np.asarray(proxy.array).astype(np.uint8)
            lut = np.array([PAINT_HU[i] for i in range(6)])
            noise = 400.0 if strategy == "farthest" else 60.0
            volume = lut[labels] + rng.normal(0.0, noise, size=labels.shape)
            shape, affine = labels.shape, proxy.affine
        return GenerationResult(
            volume=volume.astype(np.float32),
            affine=affine,
            mask=labels,
            mask_source="none" if proxy is None else ("user" if mask is not None else "retrieval"),
            label_set="coarse",
            report_sha256="",
            strategy=strategy,
            retrieved=retrieved,
            seed=seed,
            steps=1,
            cfg=0.0,
            control_scale=1.0,
            config={},
            weights={},
        )


class MeanHUClassifier:
    """Stand-in for the frozen classifier: probability of each label from the CT's mean attenuation."""

    fingerprint = "stand-in"
    metadata: ClassVar[dict[str, int]] = {"n_train": 0}

    def predict_proba(self, volumes: list[Volume]) -> np.ndarray:
        means = np.array([float(np.mean(np.clip(v.array, -1000, 1000))) for v in volumes])
        p = 1.0 / (1.0 + np.exp(-(means + 500.0) / 200.0))
        return np.repeat(p[:, None], len(CT_RATE_LABELS), axis=1)


def _case(case_id: str, patient: str, split: str, volume: Path, mask: Path | None = None, **kw: Any) -> Case:
    return Case(
        case_id=case_id,
        patient_id=patient,
        split=split,
        report_findings=f"Annotation-derived description of {case_id}.",
        report_source="annotation-derived",
        volume_path=str(volume),
        mask_path=str(mask) if mask else None,
        mask_source="totalsegmentator-total" if mask else None,
        **kw,
    )


@pytest.fixture(scope="module")
def corpus(sample_dir: Path) -> dict[str, Case]:
    ct = sample_dir / "ct"
    labels_lidc = [0] * 18
    labels_lidc[NODULE] = 1
    labels_a2 = [0] * 18
    labels_a2[EMPHYSEMA] = 1
    cases = [
        _case(
            "ts_example",
            "ts_example",
            "train",
            ct / "ts_example_ct_3mm.nii.gz",
            ct / "ts_example_ct_3mm_seg_total_fast.nii.gz",
        ),
        _case("A0001", "Lung_Dx-A0001", "train", ct / "lowres/lung_pet_ct_dx_A0001_ct_128.nii.gz"),
        # Evaluated cases; labels are constructed for the code path only (not CT-RATE annotations).
        _case(
            "lidc", "LIDC-IDRI-0314", "test", ct / "extra/lidc_idri_0314_ct_lowres.nii.gz", labels=tuple(labels_lidc)
        ),
        _case(
            "A0002", "Lung_Dx-A0002", "test", ct / "lowres/lung_pet_ct_dx_A0002_ct_128.nii.gz", labels=tuple(labels_a2)
        ),
        # A real CT with its own TotalSegmentator mask, for the "Real" spatial row (never generated from).
        _case(
            "ts_sm",
            "ts_example",
            "train",
            ct / "lowres/ts_example_ct_sm_3mm.nii.gz",
            ct / "lowres/ts_example_ct_sm_3mm_seg_total.nii.gz",
        ),
    ]
    return {c.case_id: c for c in cases}


@pytest.fixture(scope="module")
def proxies(corpus: dict[str, Case]) -> dict[str, tuple[str, Volume]]:
    mask = load_volume(corpus["ts_example"].mask_path)
    coarse = _downsample(mask.with_array(to_coarse(np.asarray(mask.array))), 4)
    return {s: ("ts_example", coarse) for s in ("nearest", "random", "farthest")}


def _index(cases: list[Case]) -> CaseIndex:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(cases), 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return CaseIndex.build(vecs, cases, encoder_fingerprint="test-encoder", encoder_name="test")


def _fid() -> FIDEvaluator:
    cfg = FIDConfig(volume_shape=(32, 32, 16), slice_size=32, slices_per_volume=8, crops_per_volume=4)
    return FIDEvaluator(cfg, HistogramExtractor(2), HistogramExtractor(3))


def _runner(config: GenerationEvalConfig, painter: Painter, index: CaseIndex | None, out: Path) -> AblationRunner:
    return AblationRunner(
        config,
        painter,
        segmenter=band_segmenter,
        generator_id="painter-v1",
        cache_dir=out / "generated",
        index=index,
        classifier=MeanHUClassifier(),
        fid=_fid(),
    )


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory, corpus, proxies) -> tuple[Path, Painter, dict[str, Path], Any]:
    out = tmp_path_factory.mktemp("ablation")
    config = GenerationEvalConfig(seeds=SEEDS, n_bootstrap=500, figure_cases=2)
    cases = select_cases(list(corpus.values()), config)
    painter = Painter(proxies)
    index = _index([corpus["ts_example"], corpus["A0001"]])
    result = _runner(config, painter, index, out).run(cases, [corpus["ts_sm"]])
    paths = write_ablation_outputs(result, out, command="ctrag evaluate generation --config test")
    return out, painter, paths, result


def test_select_cases_keeps_held_out_cases_with_ct_and_report(corpus) -> None:
    chosen = select_cases(list(corpus.values()), GenerationEvalConfig())
    assert [c.case_id for c in chosen] == ["lidc", "A0002"]
    with pytest.raises(LeakageError, match="not in the evaluated split"):
        select_cases(list(corpus.values()), GenerationEvalConfig(case_ids=("A0001",)))


def test_table_marks_the_worse_method_and_not_the_identical_one(ablation_run) -> None:
    _, painter, paths, result = ablation_run
    assert painter.calls == 5 * len(SEEDS) * 2
    methods = result.methods
    farthest, random_, nearest = (
        methods["farthest"]["metrics"],
        methods["random"]["metrics"],
        methods["nearest"]["metrics"],
    )
    # Identical generations: same numbers, p = 1, no star.
    assert random_["dice"]["mean"] == pytest.approx(nearest["dice"]["mean"])
    assert random_["dice"]["p_value"] == 1.0 and not random_["dice"]["significant"]
    # Noisy generations follow the proxy worse on every seed: one-sided exact p = 1/32 < 0.05.
    assert farthest["dice"]["mean"] < nearest["dice"]["mean"] - 0.1
    assert farthest["dice"]["significant"] and farthest["dice"]["p_value"] == pytest.approx(1 / 32)
    assert farthest["hd95"]["significant"]
    assert nearest["dice"]["ci_low"] <= nearest["dice"]["mean"] <= nearest["dice"]["ci_high"]
    assert "p_value" not in nearest["dice"]  # the reference is not tested against itself
    # Text-only has no proxy: spatial metrics are not applicable, the other axes are computed.
    assert "dice" not in methods["none"]["metrics"] and {"dice", "hd95"} <= set(methods["none"]["not_applicable"])
    assert np.isfinite(methods["none"]["metrics"]["fid_avg"]["mean"])
    assert methods["gt_mask"]["metrics"]["dice"]["mean"] > 0.5

    md = paths["markdown"].read_text(encoding="utf-8")
    assert "## Table 1: image fidelity" in md and "## Table 3: spatial controllability" in md
    row = next(
        line for line in md.splitlines() if line.startswith("| RAG-Farthest") and "—" not in line and "*" in line
    )
    assert row.count("*") >= 2
    text_only_t3, text_only_t3b = [line for line in md.splitlines() if line.startswith("| Text-only")][-2:]
    assert text_only_t3.count("—") == 2 and text_only_t3b.count("—") == 5  # Table 3b: five structures
    # Per-structure means: the painted proxy has lungs, so the lung columns are scored.
    assert (
        methods["nearest"]["metrics"]["dice_lung_left"]["mean"]
        > methods["farthest"]["metrics"]["dice_lung_left"]["mean"]
    )
    assert "ctrag evaluate generation --config test" in md
    assert "segmenter's mask" in md  # GT method on cases without masks is declared as such


def test_outputs_json_csv_and_figures(ablation_run) -> None:
    out, _, paths, result = ablation_run
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert set(data["methods"]) == {"none", "farthest", "random", "nearest", "gt_mask"}
    assert data["config"]["seeds"] == list(SEEDS)
    assert data["real"]["metrics"]["dice"]["n"] == 1  # Real row: ts_sm segmented vs its TotalSegmentator mask
    with open(paths["csv"], encoding="utf-8") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert rows["farthest"]["dice_significant"] == "1" and rows["random"]["dice_significant"] == "0"
    assert rows["none"]["dice"] == ""
    with open(paths["per_case"], encoding="utf-8") as fh:
        per_case = list(csv.DictReader(fh))
    assert len(per_case) == 5 * len(SEEDS) * 2
    assert {r["retrieved"] for r in per_case if r["method"] == "nearest"} == {"ts_example"}
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figs == [
        "compare_lidc.png",
        "grid_farthest.png",
        "grid_gt_mask.png",
        "grid_nearest.png",
        "grid_none.png",
        "grid_random.png",
        "metrics.png",
    ]
    assert all((out / "figures" / f).stat().st_size > 5000 for f in figs)
    # Clinical columns are computed from the test-constructed labels (AUC needs both classes per label).
    assert result.methods["nearest"]["metrics"]["auc_macro"]["mean"] == pytest.approx(
        result.methods["nearest"]["metrics"]["auc_macro"]["per_seed"][0]
    )


def test_rerun_resumes_from_cache_with_identical_numbers(ablation_run, corpus, proxies) -> None:
    out, _, _, first = ablation_run
    config = GenerationEvalConfig(seeds=SEEDS, n_bootstrap=500, figure_cases=2)
    painter = Painter(proxies)
    index = _index([corpus["ts_example"], corpus["A0001"]])
    again = _runner(config, painter, index, out).run(select_cases(list(corpus.values()), config), [corpus["ts_sm"]])
    assert painter.calls == 0
    assert all(r["from_cache"] for r in again.per_case)
    for key in first.methods:
        for metric, entry in first.methods[key]["metrics"].items():
            assert again.methods[key]["metrics"][metric]["mean"] == pytest.approx(entry["mean"], rel=1e-9), (
                key,
                metric,
            )
    # A different seed list is a different sample set: only the new seed is generated.
    more = GenerationEvalConfig(seeds=(*SEEDS, 5), methods=("nearest",), n_bootstrap=100, figures=False)
    painter2 = Painter(proxies)
    _runner(more, painter2, index, out).run(select_cases(list(corpus.values()), more))
    assert painter2.calls == 2


def test_leakage_guard_refuses_index_with_evaluated_case_or_patient(tmp_path, corpus, proxies) -> None:
    config = GenerationEvalConfig(seeds=(0,), methods=("nearest",))
    cases = select_cases(list(corpus.values()), config)
    painter = Painter(proxies)
    leaky = _index([corpus["ts_example"], corpus["lidc"]])
    with pytest.raises(LeakageError, match="query case"):
        _runner(config, painter, leaky, tmp_path).run(cases)
    same_patient = corpus["A0001"].evolve(case_id="lidc_rescan", patient_id="LIDC-IDRI-0314", split="train")
    with pytest.raises(LeakageError, match="patient"):
        _runner(config, painter, _index([corpus["ts_example"], same_patient]), tmp_path).run(cases)
    assert painter.calls == 0  # refused before generating anything
    # A generator that hands back an evaluated case as its proxy is caught as well.
    leaking_painter = Painter(proxies, leak_case="lidc")
    with pytest.raises(LeakageError, match="evaluated case lidc"):
        _runner(config, leaking_painter, _index([corpus["ts_example"]]), tmp_path).run(cases)
    with pytest.raises(Exception, match="index to check it for leakage"):
        _runner(config, painter, None, tmp_path).run(cases)


def _val_report_cases(sample_dir: Path, n: int) -> list[Case]:
    """Real held-out CT-RATE validation reports; their CTs are not shipped, so these cases have none."""
    path = sample_dir / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "val.csv"
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:n]
    return [
        Case(
            case_id=f"val_report_{i}",
            patient_id=f"val_patient_{i}",
            split="val",
            report_findings=row["report_text"],
            report_source="radiologist",
        )
        for i, row in enumerate(rows)
    ]


def test_report_only_cases_join_every_method_but_the_gt_mask(tmp_path, sample_dir, corpus, proxies) -> None:
    reports = _val_report_cases(sample_dir, 3)
    everything = [*corpus.values(), *reports]
    config = GenerationEvalConfig(
        seeds=(0, 1), methods=("none", "nearest", "gt_mask"), report_split="val", max_report_cases=2, figures=False
    )
    cases = select_cases(everything, config)
    report_cases = select_report_cases(everything, config)
    assert [c.case_id for c in report_cases] == ["val_report_0", "val_report_1"]
    painter = Painter(proxies)
    index = _index([corpus["ts_example"], corpus["A0001"]])
    result = _runner(config, painter, index, tmp_path).run(cases, [corpus["ts_sm"]], report_cases)
    # none/nearest: 2 CT cases + 2 reports; gt_mask: the 2 CT cases only; 2 seeds each.
    assert painter.calls == (4 + 4 + 2) * 2
    nearest_rows = [r for r in result.per_case if r["method"] == "nearest" and r["seed"] == 0]
    assert {r["case_id"]: r["has_ct"] for r in nearest_rows} == {
        "lidc": True,
        "A0002": True,
        "val_report_0": False,
        "val_report_1": False,
    }
    assert all(np.isfinite(r["dice"]) for r in nearest_rows)
    assert {r["case_id"] for r in result.per_case if r["method"] == "gt_mask"} == {"lidc", "A0002"}
    assert result.provenance["report_cases"] == ["val_report_0", "val_report_1"]
    assert any("without a CT" in n for n in result.notes)
    assert np.isfinite(result.methods["none"]["metrics"]["fid_avg"]["mean"])
    paths = write_ablation_outputs(result, tmp_path / "tables", figures=False)
    assert "held-out reports without a CT: 2 (val_report_0, val_report_1)" in paths["markdown"].read_text()
    # A report split holding a case that the index was built on is refused like any other leak.
    leaky = _index([corpus["ts_example"], reports[0].evolve(split="train")])
    with pytest.raises(LeakageError):
        _runner(config, Painter(proxies), leaky, tmp_path / "leak").run(cases, (), report_cases)


def test_report_split_settings_are_checked(sample_dir, corpus) -> None:
    from ctrag.errors import ConfigError, InvalidInputError

    with pytest.raises(ConfigError, match="held-out split"):
        GenerationEvalConfig(report_split="train")
    with pytest.raises(ConfigError, match=r"needs evaluation\.report_split"):
        GenerationEvalConfig(report_case_ids=("x",))
    everything = [*corpus.values(), *_val_report_cases(sample_dir, 1)]
    with pytest.raises(InvalidInputError, match="not report-only"):
        select_report_cases(everything, GenerationEvalConfig(report_split="test", report_case_ids=("lidc",)))
    with pytest.raises(InvalidInputError, match="no report-only case"):
        select_report_cases(list(corpus.values()), GenerationEvalConfig(report_split="val"))
    assert select_report_cases(everything, GenerationEvalConfig()) == []
