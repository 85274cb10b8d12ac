"""Contrastive training on the shipped real CTs with annotation-derived captions (not radiologist reports).

At this scale (4 training CTs) the run shows that the code path learns: the loss falls and each training CT
retrieves its own caption better than chance. It says nothing about generalisation.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrag.data.transforms import load_preprocess_config
from ctrag.encoders import create_encoder
from ctrag.encoders.config import EncoderConfig, EncoderTrainConfig
from ctrag.encoders.preprocess import load_prepared
from ctrag.encoders.train import LOAD_STAGE, TRAIN_STAGE, augment, select_training_cases, train_encoder
from ctrag.errors import CheckpointMismatchError, InvalidInputError

EPOCHS = 14


def _cfg(tower_json: Path, **train) -> EncoderConfig:
    base = EncoderTrainConfig(epochs=EPOCHS, batch_size=8, lr=3e-3, views_per_case=1, split="train", seed=0)
    return EncoderConfig(volume_model=str(tower_json), train=replace(base, **train))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ct_cases, tiny_tower_json, minilm):
    out = tmp_path_factory.mktemp("encoder-run")
    losses: list[float] = []
    reports: list[tuple[str, int, int]] = []
    result = train_encoder(
        ct_cases,
        out,
        _cfg(tiny_tower_json),
        load_preprocess_config("tiny-cpu"),
        text_encoder=minilm,
        on_epoch=lambda epoch, loss: losses.append(loss),
        progress=lambda *event: reports.append(event),
    )
    # one ProgressFn: the CTs as they load, then every optimisation step of the whole run
    loads = [r for r in reports if r[0] == LOAD_STAGE]
    steps = [r for r in reports if r[0] == TRAIN_STAGE]
    assert loads[-1][1:] == (len(loads), len(loads)) and len(loads) == result.retrieval_after["n"]
    assert steps and steps[-1][1] == steps[-1][2] and [r[1] for r in steps] == list(range(1, len(steps) + 1))
    return result, out, losses


def test_loss_decreases_on_real_cts(trained):
    result, _, losses = trained
    assert result.epochs_done == EPOCHS and losses == result.epoch_losses
    assert abs(losses[0] - math.log(4)) < 0.5  # starts near chance for 4 distinct captions
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3


def test_trained_tower_retrieves_own_caption_better_than_chance(trained):
    result, _, _ = trained
    after = result.retrieval_after
    assert after["n"] == 4  # the test-split CT (LIDC-IDRI-0314) is not trained on
    assert after["top1"] > after["chance_top1"] and after["mean_rank"] < after["chance_mean_rank"]
    assert after["mean_rank"] <= result.retrieval_before["mean_rank"]
    assert result.report_sources == {"annotation-derived": 4}


def test_outputs_and_exported_encoder(trained, ct_cases, minilm):
    result, out, _ = trained
    for name in ("checkpoint.pt", "volume_tower.pt", "encoder_config.json", "train_summary.json", "loss.png",
                 "text_embeddings.sqlite"):  # fmt: skip
        assert (out / name).is_file(), name
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["fingerprint"] == result.fingerprint and "not a CT-RATE-scale encoder" in summary["note"]
    record = json.loads((out / "encoder_config.json").read_text())
    assert record["text_encoder"]["fingerprint"] == minilm.fingerprint
    assert record["preprocess"]["size"] == [64, 64, 32]
    enc = create_encoder(out)  # rebuilds the text encoder from the recorded spec
    assert enc.fingerprint == result.fingerprint and enc.supports_volume
    held_out = next(c for c in ct_cases if c.split == "test")
    vec = enc.encode_volume(load_prepared(held_out.volume_path, load_preprocess_config("tiny-cpu")).tensor[None])
    assert vec.shape == (1, 384) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5


def test_resume_continues_and_refuses_a_different_run(trained, ct_cases, tiny_tower_json, minilm, tmp_path):
    result, out, _ = trained
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    more = train_encoder(ct_cases, copy, _cfg(tiny_tower_json, epochs=EPOCHS + 2), load_preprocess_config("tiny-cpu"),
                         text_encoder=minilm)  # fmt: skip
    assert more.resumed_from_epoch == EPOCHS and more.epochs_done == EPOCHS + 2
    assert more.epoch_losses[:EPOCHS] == result.epoch_losses
    other_pre = load_preprocess_config("tiny-cpu", ["spacing=[5.0, 5.0, 5.0]"])
    with pytest.raises(CheckpointMismatchError, match="cannot resume, 'preprocess' differs"):
        train_encoder(ct_cases, copy, _cfg(tiny_tower_json, epochs=EPOCHS + 3), other_pre, text_encoder=minilm)


def test_same_seed_same_first_epochs(trained, ct_cases, tiny_tower_json, minilm, tmp_path):
    result, _, _ = trained
    again = train_encoder(ct_cases, tmp_path / "again", _cfg(tiny_tower_json, epochs=2),
                          load_preprocess_config("tiny-cpu"), text_encoder=minilm)  # fmt: skip
    np.testing.assert_allclose(again.epoch_losses, result.epoch_losses[:2], rtol=1e-4)


def test_too_few_pairs_is_a_clear_error(ct_cases):
    with pytest.raises(InvalidInputError, match="at least 2 cases with both a CT and a report"):
        select_training_cases(ct_cases, "test")


def test_augment_crops_and_flips_only_allowed_axes():
    vol = torch.arange(16 * 16 * 8, dtype=torch.float32).reshape(1, 16, 16, 8) / 2048
    cfg = EncoderTrainConfig(crop_fraction=0.75, flip_prob=1.0, flip_axes=(1,))
    out = augment(vol, cfg, torch.Generator().manual_seed(0))
    assert out.shape == (1, 12, 12, 8)  # 8 * 0.75 = 6 < 8 voxels minimum -> kept at 8
    assert bool((out[0, 1:, 0, 0] > out[0, :-1, 0, 0]).all())  # axis 0 (left-right) never mirrored
    assert bool((out[0, 0, 1:, 0] < out[0, 0, :-1, 0]).all())  # axis 1 mirrored
    same = augment(vol, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)


def test_gap_penalty_shrinks_the_modality_gap_at_equal_epochs(ct_cases, tiny_tower_json, minilm, tmp_path):
    from ctrag.encoders.train import centroid_gap_penalty

    gaps = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"w{weight}"
        train_encoder(ct_cases, out, _cfg(tiny_tower_json, gap_weight=weight),
                      load_preprocess_config("tiny-cpu"), text_encoder=minilm)  # fmt: skip
        summary = json.loads((out / "train_summary.json").read_text())
        assert summary["gap_weight"] == weight
        gaps[weight] = (
            summary["train_modality_gap_before"]["gap_norm"],
            summary["train_modality_gap_after"]["gap_norm"],
        )
    assert gaps[0.0][0] == pytest.approx(gaps[1.0][0])  # same seed, same untrained tower
    assert gaps[1.0][1] < 0.5 * gaps[0.0][1]
    x = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    assert float(centroid_gap_penalty(x, x)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="gap_weight"):
        EncoderTrainConfig(gap_weight=-1.0)


def _labelled_cases(ct_cases):
    """The shipped CTs with real CT-RATE label rows borrowed (pseudo-pair style; the CTs have no labels of their
    own) and the scanner vendor of the two Lung-PET-CT-Dx CTs from the shipped TCIA metadata csv; ts_example_ct
    stays unlabelled so the one-hot fallback is exercised."""
    import csv

    from ctrag.data.labels import CT_RATE_LABELS

    root = Path(__file__).resolve().parents[2] / "sample_data"
    with open(root / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "train.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))[:4]
    with open(root / "ct" / "lung_pet_ct_dx_tcia_metadata.csv", encoding="utf-8", newline="") as fh:
        vendor = {r["Subject ID"].split("-")[-1]: r["Manufacturer"] for r in csv.DictReader(fh)}
    out = []
    for case, row in zip(ct_cases, rows + [None] * len(ct_cases), strict=False):
        labels = tuple(int(float(row[n])) for n in CT_RATE_LABELS) if row and case.case_id != "ts_example_ct" else None
        scanner = vendor.get(case.case_id.rsplit("_", 1)[-1])
        out.append(case.evolve(labels=labels, extra={**case.extra, **({"scanner": scanner} if scanner else {})}))
    return out


def test_soft_targets_weight_zero_is_todays_loss_and_soft_steps_run(ct_cases, tiny_tower_json, minilm, tmp_path):
    cases = _labelled_cases(ct_cases)
    assert {c.extra.get("scanner") for c in cases} == {"Philips", "SIEMENS", None}
    pre = load_preprocess_config("tiny-cpu")

    def run(name, **train):
        return train_encoder(cases, tmp_path / name, _cfg(tiny_tower_json, epochs=2, **train), pre, text_encoder=minilm)

    plain = run("plain")
    zero = run("zero", soft_targets="label_jaccard", soft_target_weight=0.0)
    assert zero.epoch_losses == plain.epoch_losses  # bit-identical, same seed
    soft = run("soft", soft_targets="label_jaccard", soft_target_weight=1.0,
               same_metadata_negatives_only=("scanner",))  # fmt: skip
    assert all(math.isfinite(x) for x in soft.epoch_losses) and soft.epoch_losses != plain.epoch_losses
    summary = json.loads((tmp_path / "soft" / "train_summary.json").read_text())
    assert summary["soft_targets"] == "label_jaccard" and summary["n_labelled_pairs"] == 3
    assert summary["same_metadata_negatives_only"] == ["scanner"]
    with pytest.raises(InvalidInputError, match="needs case labels"):
        train_encoder(ct_cases, tmp_path / "nolabels", _cfg(tiny_tower_json, epochs=1, soft_targets="label_jaccard"),
                      pre, text_encoder=minilm)  # fmt: skip
    with pytest.raises(ValueError, match="soft_targets must be one of"):
        EncoderTrainConfig(soft_targets="jaccard")
