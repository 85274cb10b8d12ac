"""Strict state-dict loading and safe checkpoint reading shared by generator components and FID backbones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ctrag.errors import CheckpointMismatchError, WeightsNotFoundError
from ctrag.utils.checkpoints import load_checkpoint_file, load_strict


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4))


def test_load_strict_copies_a_matching_state_and_names_every_difference() -> None:
    source, target = _net(), nn.Sequential(nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4))
    load_strict(target, source.state_dict(), "src")
    assert torch.equal(target[0].weight, source[0].weight)

    state = source.state_dict()
    state.pop("0.bias")
    state["extra"] = torch.zeros(1)
    state["1.weight"] = torch.zeros(5)
    with pytest.raises(CheckpointMismatchError, match=r"src: .*1 missing \['0.bias'\], 1 unexpected \['extra'\]"):
        load_strict(target, state, "src")
    with pytest.raises(CheckpointMismatchError, match=r"1 shape mismatches \['1.weight: checkpoint \(5,\)"):
        load_strict(target, {k: v for k, v in state.items() if k != "extra"} | {"0.bias": torch.zeros(4)}, "src")


def test_optional_keys_may_be_absent_and_keep_the_model_values() -> None:
    source, target = _net(), _net()
    target[1].num_batches_tracked.fill_(7)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    with pytest.raises(CheckpointMismatchError, match="1 missing"):
        load_strict(target, state, "src")
    load_strict(target, state, "src", optional=lambda k: k.endswith("num_batches_tracked"))
    assert int(target[1].num_batches_tracked) == 7
    assert torch.equal(target[1].running_var, source[1].running_var)


def test_checkpoint_files_are_read_without_pickled_code(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_checkpoint_file(good)["w"], torch.ones(2))
    bad = tmp_path / "bad.pt"
    torch.save({"w": torch.ones(2), "obj": Path("x")}, bad)
    with pytest.raises(CheckpointMismatchError, match="weights_only"):
        load_checkpoint_file(bad)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_checkpoint_file(tmp_path / "absent.pt")
