"""The ``encoder:`` preset section: both shipped presets load, and settings that cannot train are refused."""

from __future__ import annotations

import pytest

from ctrag.config import config_to_dict, load_config
from ctrag.encoders.config import EncoderConfig, EncoderTrainConfig
from ctrag.errors import ConfigError


def test_shipped_presets_load() -> None:
    tiny = load_config(EncoderConfig, "tiny-cpu", section="encoder")
    big = load_config(EncoderConfig, "text2ct-512", section="encoder")
    assert tiny.volume_model == "ctrag-volume-tiny" and big.volume_model == "ctrag-volume-base"
    assert tiny.train.device == "cpu" and big.train.device == "cuda"
    # left-right flips are off in both: captions state laterality
    assert 0 not in tiny.train.flip_axes and 0 not in big.train.flip_axes
    assert config_to_dict(tiny)["train"]["flip_axes"] == [1]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=1", "one pair per batch has no negatives"),
        ("train.crop_fraction=0", r"crop_fraction must be in \(0, 1\]"),
        ("train.flip_prob=1.5", "flip_prob in"),
        ("train.flip_axes=[3]", "flip_axes must be among 0, 1, 2"),
        ("train.views_per_case=0", "views_per_case and checkpoint_every must be >= 1"),
        ("train.momentum=0.9", "momentum"),
    ],
)
def test_bad_training_settings_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(EncoderConfig, "tiny-cpu", [override], section="encoder")


def test_defaults_are_valid_and_overrides_apply() -> None:
    assert EncoderTrainConfig().batch_size >= 2
    cfg = load_config(EncoderConfig, "tiny-cpu", ["long_text=chunk-mean", "train.epochs=3"], section="encoder")
    assert cfg.long_text == "chunk-mean" and cfg.train.epochs == 3
