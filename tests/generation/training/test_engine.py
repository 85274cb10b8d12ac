"""The training engine: exact resume, progress through ProgressFn, EMA, checkpoint keys, learning-rate schedule."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ctrag.errors import CheckpointMismatchError
from ctrag.generation.config import TrainConfig, load_generator_config
from ctrag.generation.training.engine import STATE_FILE, TrainLoop, lr_at, step_generator


class _Regression(nn.Module):
    """A toy objective: least squares of a linear map (what the engine sees of any real objective)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((self.net(x) - y) ** 2).mean()


def _make(step: int, gen: torch.Generator) -> Mapping[str, Any]:
    x = torch.randn(8, 4, generator=gen)
    return {"x": x, "y": x.sum(dim=1, keepdim=True)}


def _prepare(batch: Mapping[str, Any], dev: torch.device, gen: torch.Generator) -> dict[str, Any]:
    return {k: v.to(dev) for k, v in batch.items()}


def _loop(out: Path, cfg: TrainConfig, progress: Any = None) -> TrainLoop:
    return TrainLoop(_Regression(), cfg, out, _make, _prepare, device=torch.device("cpu"), progress=progress)


def test_stopped_and_resumed_loop_repeats_the_straight_run(tmp_path: Path) -> None:
    cfg = TrainConfig(lr=0.1, steps_per_epoch=30, save_every=4, ema_decay=0.5, seed=3, warmup_steps=2, grad_clip=0)
    calls: list[tuple[str, int, int]] = []
    straight = _loop(tmp_path / "straight", cfg, lambda *a: calls.append(a)).run()
    assert straight.steps == 30 and len(straight.losses) == 30
    assert sum(straight.losses[-5:]) < 0.5 * sum(straight.losses[:5])  # the toy regression learns
    assert calls[0] == ("train straight", 0, 30) and calls[-1] == ("train straight", 30, 30) and len(calls) == 31
    first = _loop(tmp_path / "resumed", cfg).run(stop_after=9)
    assert first.steps == 9 and (tmp_path / "resumed" / STATE_FILE).is_file()
    again = _loop(tmp_path / "resumed", cfg)
    resumed = again.run()
    assert resumed.resumed_from == 9 and resumed.losses == straight.losses
    live = {k: v.detach() for k, v in again.params.items()}
    assert any(not torch.equal(live[k], v) for k, v in again.final_params().items())  # EMA copy is published
    with pytest.raises(CheckpointMismatchError, match="other settings"):
        _loop(tmp_path / "resumed", TrainConfig(lr=0.5, steps_per_epoch=30, save_every=4, seed=3)).run()


def test_step_generators_depend_only_on_seed_step_rank() -> None:
    a = torch.rand(3, generator=step_generator(1, 5, 0))
    torch.manual_seed(99)
    assert torch.equal(a, torch.rand(3, generator=step_generator(1, 5, 0)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 6, 0)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 5, 1)))


def test_lr_schedule_warmup_and_cosine() -> None:
    cfg = load_generator_config("tiny-cpu", ["train_vae.warmup_steps=10", "train_vae.steps_per_epoch=110"]).train_vae
    assert lr_at(0, cfg) == pytest.approx(cfg.lr / 10)
    assert lr_at(9, cfg) == pytest.approx(cfg.lr)
    assert lr_at(109, cfg) < 0.1 * cfg.lr and lr_at(60, cfg) < lr_at(20, cfg)
