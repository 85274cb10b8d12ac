"""SegmentConfig: presets load, inconsistent settings are refused with messages that say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrag.config import config_to_dict, load_config
from ctrag.errors import ConfigError
from ctrag.segment import ClassicalConfig, SegmentConfig


@pytest.mark.parametrize("preset", ["tiny-cpu", "text2ct-512"])
def test_presets_have_a_segment_section(preset: str) -> None:
    cfg = load_config(SegmentConfig, preset, section="segment")
    assert cfg.method == "classical" and cfg.labels == "coarse"
    assert cfg.classical.working_spacing_mm == 3.0
    assert load_config(SegmentConfig, config_to_dict(cfg)) == cfg


def test_yaml_overrides_and_weights_path(tmp_path: Path) -> None:
    file = tmp_path / "seg.yaml"
    file.write_text("segment:\n  method: totalsegmentator\n  labels: total\n  totalseg:\n    weights_dir: /w\n")
    cfg = load_config(SegmentConfig, file, ["totalseg.fast=false"], section="segment")
    assert cfg.method == "totalsegmentator" and cfg.totalseg.weights_dir == Path("/w") and not cfg.totalseg.fast


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"labels": "total"}, 'needs method "totalsegmentator"'),
        ({"method": "nnunet"}, "expected one of"),
        ({"classical": {"bone_hu": -600.0}}, "body_hu < bone_hu"),
        ({"classical": {"airway_hu": -300.0}}, "airway_hu"),
        ({"classical": {"lung_closing_mm": -1.0}}, "lung_closing_mm must be >= 0"),
        ({"classical": {"bone_hu_typo": 1.0}}, "unknown key"),
    ],
)
def test_bad_settings_are_refused(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(SegmentConfig, data)


def test_defaults_are_consistent() -> None:
    cfg = ClassicalConfig()
    assert cfg.airway_hu < cfg.air_hu < cfg.body_hu + 200 and cfg.marrow_hu < cfg.bone_hu
