"""Generation evaluation wiring: the segmenter it scores with and the FID weights it fills in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ctrag.data.nifti import load_volume
from ctrag.errors import ConfigError
from ctrag.evaluation.fid import FIDConfig
from ctrag.evaluation.generation_eval import make_segmenter, resolve_fid_config


def test_resolve_fid_config_fills_classifier_weights_only_where_missing() -> None:
    fid = FIDConfig()
    filled = resolve_fid_config(fid, "/models/clf")
    assert filled.weights_2d == "/models/clf" and filled.weights_3d == "/models/clf"
    assert resolve_fid_config(fid, None) is fid
    own = dataclasses.replace(fid, weights_2d="/other")
    assert resolve_fid_config(own, "/models/clf").weights_2d == "/other"
    random = dataclasses.replace(fid, extractor_2d="random-resnet2d", extractor_3d="random-resnet3d")
    assert resolve_fid_config(random, "/models/clf") is random


def test_make_segmenter_gives_coarse_labels_on_a_real_ct(lowres_chest_ct: Path) -> None:
    from ctrag.segment import SegmentConfig

    ct = load_volume(lowres_chest_ct)
    mask = make_segmenter()(ct)
    labels = set(np.unique(np.asarray(mask.array)).tolist())
    assert {0, 1} <= labels and labels <= {0, 1, 2, 3, 4, 5} and ({2, 3} & labels)
    with pytest.raises(ConfigError, match="evaluation compares coarse labels"):
        make_segmenter(SegmentConfig(method="totalsegmentator", labels="total"))


def test_make_segmenter_names_its_backend_and_falls_back_without_weights(tmp_path: Path) -> None:
    from ctrag.segment import SegmentConfig, TotalSegConfig

    assert make_segmenter().description.startswith("classical")
    cfg = SegmentConfig(method="totalsegmentator", totalseg=TotalSegConfig(weights_dir=tmp_path / "absent"))
    seg = make_segmenter(cfg)
    assert seg.config.method == "classical"
    assert "TotalSegmentator unavailable" in seg.description and "absent" in seg.description
