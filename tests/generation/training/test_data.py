"""Training data: crops, left-right flips (off by default, labels swapped when on), the run-log record, the test
split never trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctrag.data.labels import label_names, left_right_table, totalseg_v2_labels
from ctrag.generation.config import GeneratorConfig, TrainConfig, load_generator_config
from ctrag.generation.training.data import CropSampler, flip_left_right
from ctrag.generation.training.engine import step_generator


@pytest.mark.parametrize("preset", ["tiny-cpu", "text2ct-512"])
def test_left_right_flips_are_off_by_default(preset: str) -> None:
    """Bug 2c: a flip mirrors heart and aorta while the report keeps its laterality, so it must be asked for."""
    assert TrainConfig().flip_prob == 0.0 and GeneratorConfig().train_vae.flip_prob == 0.0
    cfg = load_generator_config(preset)
    # the text-conditioned trainings never flip unless asked (tiny-cpu flips for its VAE, which reads no text)
    assert [cfg.train_diffusion.flip_prob, cfg.train_controlnet.flip_prob] == [0.0, 0.0]
    assert GeneratorConfig().train_diffusion.flip_prob == GeneratorConfig().train_controlnet.flip_prob == 0.0


def test_enabled_flip_mirrors_the_ct_and_swaps_left_right_labels(training_cases) -> None:  # type: ignore[no-untyped-def]
    cases = [c for c in training_cases if c.labels is not None][:2]
    plain = CropSampler(cases, (64, 64, 32), 0.0, label_set="coarse").sample(3, step_generator(5, 0))
    flipped = CropSampler(cases, (64, 64, 32), 1.0, label_set="coarse").sample(3, step_generator(5, 0))
    assert torch.equal(plain["case_index"], flipped["case_index"])  # same crops: only the flip differs
    assert torch.equal(flipped["image"], plain["image"].flip(2))
    table = torch.as_tensor(left_right_table(label_names("coarse")))
    assert torch.equal(flipped["labels"], table[plain["labels"].long().flip(2)].to(plain["labels"].dtype))
    # RAS: the right lung (3) lies at higher i than the left (2), before and after: the labels follow the anatomy
    i = torch.arange(64).view(1, 1, 64, 1, 1).float()
    for lab in (plain["labels"], flipped["labels"]):
        right, left = (lab == 3), (lab == 2)
        assert bool(right.any()) and bool(left.any())
        assert float((i * right).sum() / right.sum()) > float((i * left).sum() / left.sum())


def test_run_log_says_when_flips_break_text_laterality(tmp_path: Path, training_cases) -> None:  # type: ignore[no-untyped-def]
    from ctrag.generation.training import LOG_FILE, train_vae
    from ctrag.generation.training.data import flip_record

    base = ["train_vae.steps_per_epoch=2", "train_vae.batch_size=1", "train_vae.save_every=2"]
    cfg = load_generator_config("tiny-cpu", base)
    assert flip_record(cfg.train_diffusion, None, True) == {"prob": 0.0}
    flip_cfg = load_generator_config("tiny-cpu", [*base, "train_controlnet.flip_prob=0.5", "train_vae.flip_prob=0.5"])
    record = flip_record(flip_cfg.train_controlnet, "coarse", True)
    assert record["prob"] == 0.5 and "laterality" in record["note"] and "swap the left/right labels" in record["note"]
    train_vae(None, flip_cfg, tmp_path, cases=training_cases[:1])
    log = json.loads((tmp_path / "vae" / LOG_FILE).read_text())
    assert log["flip"]["prob"] == 0.5 and "mirror" in log["flip"]["note"]


def test_flip_swaps_left_and_right_structures() -> None:
    labels = torch.zeros(1, 1, 4, 2, 2, dtype=torch.uint8)
    labels[0, 0, 0] = 2  # lung_left on the first column
    labels[0, 0, 3] = 5  # bone on the last
    flipped = flip_left_right(labels, "coarse", axis=2)
    assert torch.all(flipped[0, 0, 3] == 3) and torch.all(flipped[0, 0, 0] == 5)
    ts = {v: k for k, v in totalseg_v2_labels().items()}
    t = torch.tensor([ts["kidney_left"], ts["liver"]]).view(1, 1, 2, 1, 1)
    assert flip_left_right(t, "totalseg", axis=2).flatten().tolist() == [ts["liver"], ts["kidney_right"]]
