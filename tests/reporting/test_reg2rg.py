"""Reg2RG on shipped data: real CT-RATE train reports for the text side, shipped CTs with their masks."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from ctrag.data.ct_rate import read_ctclip_classifier
from ctrag.data.folder import read_folder
from ctrag.data.nifti import load_volume
from ctrag.errors import LeakageError
from ctrag.reporting.lm import TinyDecoderConfig
from ctrag.reporting.reg2rg import (
    REGIONS,
    Reg2RGConfig,
    Reg2RGReporter,
    region_paragraphs,
    save_reg2rg,
    training_samples,
)
from ctrag.reporting.sentences import tag_regions
from ctrag.reporting.training.reg2rg import Reg2RGTrainConfig, train_reg2rg
from ctrag.reporting.visual import VisualConfig

REPO = Path(__file__).resolve().parents[2]
CT_DIR = REPO / "sample_data" / "ct"
TINY = Reg2RGTrainConfig(
    steps=3,
    text_steps=3,
    text_batch=2,
    targets_per_case=2,
    max_text_cases=30,
    lm=TinyDecoderConfig(vocab_size=400, n_layer=1, n_head=2, n_embd=32, n_positions=512),
    visual=VisualConfig(size=(32, 32, 32), patch_size=(16, 16, 16), geometry_size=(8, 8, 8)),
    model=Reg2RGConfig(geometry_dim=16, max_paragraph_tokens=6, max_impression_tokens=6),
)


@pytest.fixture(scope="module")
def text_cases() -> list[Any]:
    folder = REPO / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier"
    return [c for c in read_ctclip_classifier(folder) if c.split == "train"]


@pytest.fixture(scope="module")
def ct_cases() -> list[Any]:
    return read_folder(CT_DIR)


@pytest.fixture(scope="module")
def trained(text_cases: list[Any], ct_cases: list[Any]) -> tuple[Any, dict[str, Any]]:
    train = [c for c in ct_cases if c.split == "train"]
    return train_reg2rg(train, text_cases, TINY)


def test_region_paragraphs_hold_only_sentences_of_their_region(text_cases: list[Any]) -> None:
    case = next(c for c in text_cases if "pleural" in c.report_findings.lower())
    paras = region_paragraphs(case.report_findings, case.report_impression)
    assert "pleura" in paras and set(paras) <= set(REGIONS)
    samples = training_samples(case.report_findings, case.report_impression, REGIONS)
    assert samples[-1].region is None  # the impression target comes last
    for s in samples[:-1]:
        assert s.text == paras[s.region]
    assert any("pleura" in tag_regions(x) for x in [paras["pleura"]])


def test_region_order_is_shuffled_and_targets_follow_their_slot(trained: tuple[Any, dict[str, Any]]) -> None:
    model, _ = trained
    seen: list[tuple[list[str], list[Any], list[str]]] = []
    orders: list[list[str]] = []
    real_prompt, real_loss = model.prompt, model.lm.loss

    def spy_prompt(feats: Any, order: list[str]) -> Any:
        orders.append(list(order))
        return real_prompt(feats, order)

    def spy_loss(prompts: Any, targets: Any) -> torch.Tensor:
        seen.append((orders[-1], prompts, targets))
        return real_loss(prompts, targets)

    model.prompt, model.lm.loss = spy_prompt, spy_loss
    try:
        feats = model.visual.extract(
            load_volume(CT_DIR / "ts_example_ct_3mm.nii.gz"),
            load_volume(CT_DIR / "ts_example_ct_3mm_seg_total_fast.nii.gz"),
        )
        samples = training_samples(
            "Both lungs are clear. Heart size is normal. No lytic bone lesion.", "No acute finding.", REGIONS
        )
        rng = random.Random(0)
        for _ in range(4):
            model.loss([(feats, samples)], rng)
    finally:
        model.prompt, model.lm.loss = real_prompt, real_loss
    assert len({tuple(o) for o in orders}) > 1  # a different slot order between steps
    for order, prompts, targets in seen:
        for prompt, target in zip(prompts, targets, strict=True):
            cue = prompt[-1]
            if cue == "Impression:":
                continue
            slot = int(cue.split()[1])
            assert target.startswith(f" {order[slot - 1]}.")  # the named region is the one at that slot


def test_one_paragraph_per_requested_region_and_round_trip(trained: tuple[Any, dict[str, Any]], tmp_path: Path) -> None:
    model, summary = trained
    assert summary["report_sources"] == {"annotation-derived": 4} and summary["real_radiologist_pairs"] == 0
    assert "no (CT, own radiologist report) pair" in summary["note"]
    save_reg2rg(model, tmp_path / "m", summary)
    reporter = Reg2RGReporter.from_pretrained(tmp_path / "m")
    ct = load_volume(CT_DIR / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz")
    asked = ["heart", "lung", "bone"]
    out = reporter.report(ct, regions=asked)
    assert [p.region for p in out.paragraphs] == asked
    assert out.visual["mask_source"] == "segmenter:classical"
    assert not next(p for p in out.paragraphs if p.region == "heart").present  # the classical segmenter has no heart
    again = Reg2RGReporter(model).report(ct, regions=asked)
    assert [p.text for p in again.paragraphs] == [p.text for p in out.paragraphs] and again.impression == out.impression
    assert out.to_dict()["model"]["training_report_sources"] == {"annotation-derived": 4}


def test_training_refuses_held_out_cases(ct_cases: list[Any]) -> None:
    with pytest.raises(LeakageError):
        train_reg2rg(ct_cases, [], TINY)  # lidc_idri_0314 is a test case
