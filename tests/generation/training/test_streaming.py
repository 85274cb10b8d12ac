"""ControlNet training streamed from the latent cache repeats the in-memory loss curve, resumed or not."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ctrag.errors import ConfigError
from ctrag.generation.training import LOG_FILE, train_controlnet
from tests.generation.conftest import tiny_config

CROP = (64, 64, 32)
#: Losses of the two paths may differ only by float rounding: the memory path encodes crops in batches of 4, the
#: cache encodes one volume at a time (same images, same weights, same random draws).
LOSS_RTOL = 1e-4

SHORT = (
    "train_controlnet.steps_per_epoch=4",
    "train_controlnet.batch_size=2",
    "train_controlnet.bank_crops=8",
    "train_controlnet.save_every=1",
)


def whole_volume_cases(cases):  # type: ignore[no-untyped-def]
    """Centre crops of exactly the training crop: the crop is the whole volume, so 'encode the crop' (memory)
    and 'crop the encoded volume' (cache) see the same voxels."""
    out = []
    for c in cases:
        sl = tuple(slice((s - k) // 2, (s - k) // 2 + k) for s, k in zip(c.image.shape, CROP, strict=True))
        out.append(dataclasses.replace(c, image=np.ascontiguousarray(c.image[sl]), labels=c.labels[sl].copy()))
    return out


def _run_folder(trained_run: Path, dest: Path) -> Path:
    for part in ("vae", "unet"):
        shutil.copytree(trained_run / part, dest / part)
    shutil.copy(trained_run / "pipeline.json", dest / "pipeline.json")
    return dest


def test_streamed_controlnet_training_reproduces_the_memory_loss_curve(
    tmp_path: Path, trained_run: Path, training_cases, text_encoder
) -> None:  # type: ignore[no-untyped-def]
    cases = whole_volume_cases(training_cases)
    memory = train_controlnet(None, tiny_config(*SHORT), _run_folder(trained_run, tmp_path / "memory"),
                              cases=cases, encoder=text_encoder)  # fmt: skip
    stream_cfg = tiny_config(*SHORT, "train_controlnet.data.source=cache", "train_controlnet.data.num_workers=1",
                             "train_controlnet.data.shard_cases=2")  # fmt: skip
    run = _run_folder(trained_run, tmp_path / "stream")
    train_controlnet(None, stream_cfg, run, cases=cases, encoder=text_encoder, stop_after=2)  # interrupted
    streamed = train_controlnet(None, stream_cfg, run, cases=cases, encoder=text_encoder)
    assert streamed.resumed_from == 2 and len(streamed.losses) == len(memory.losses) == 4
    np.testing.assert_allclose(streamed.losses, memory.losses, rtol=LOSS_RTOL)
    assert len(set(memory.losses)) == 4  # a real curve, not a constant
    log = json.loads((run / "controlnet" / LOG_FILE).read_text())
    assert log["latent_cache"]["shards_built"] == [] and log["latent_cache"]["shards_reused"]  # cache kept on resume
    assert (run / "controlnet" / "model.pt").is_file()


def test_cache_source_refuses_left_right_flips() -> None:
    with pytest.raises(ConfigError, match="does not flip in x"):
        tiny_config("train_controlnet.data.source=cache", "train_controlnet.flip_prob=0.5")
