"""The training engine: exact resume, progress through ProgressFn, EMA, checkpoint keys, learning-rate schedule,
gradient accumulation, the global batch split over processes, the JSONL run log and its plot."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ctrag.errors import CheckpointMismatchError, ConfigError
from ctrag.generation.config import TrainConfig, load_generator_config
from ctrag.generation.training.engine import (
    CURVE_FILE,
    RUN_LOG_FILE,
    STATE_FILE,
    DistInfo,
    TrainLoop,
    lr_at,
    read_run_log,
    step_generator,
)


class _Regression(nn.Module):
    """A toy objective: least squares of a linear map (what the engine sees of any real objective)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((self.net(x) - y) ** 2).mean()


def _make(step: int, gens: Sequence[torch.Generator]) -> Mapping[str, Any]:
    x = torch.stack([torch.randn(4, generator=g) for g in gens])
    return {"x": x, "y": x.sum(dim=1, keepdim=True)}


def _prepare(batch: Mapping[str, Any], dev: torch.device, gens: Sequence[torch.Generator]) -> dict[str, Any]:
    return {k: v.to(dev) for k, v in batch.items()}


def _loop(out: Path, cfg: TrainConfig, progress: Any = None) -> TrainLoop:
    return TrainLoop(_Regression(), cfg, out, _make, _prepare, device=torch.device("cpu"), progress=progress)


def test_stopped_and_resumed_loop_repeats_the_straight_run(tmp_path: Path) -> None:
    cfg = TrainConfig(
        lr=0.1, steps_per_epoch=30, batch_size=8, save_every=4, ema_decay=0.5, seed=3, warmup_steps=2, grad_clip=0
    )
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
        _loop(tmp_path / "resumed", TrainConfig(lr=0.5, steps_per_epoch=30, batch_size=8, save_every=4, seed=3)).run()


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


def test_global_batch_is_split_into_contiguous_rank_and_micro_slices() -> None:
    from ctrag.generation.training.engine import micro_batch_indices

    seen = [
        list(micro_batch_indices(8, 2, rank, 2, micro)) for rank in range(2) for micro in range(2)
    ]  # rank-major: rank 0 holds the first half of the global batch
    assert seen == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ConfigError, match=r"batch_size 8 .* world_size 3 x grad_accum_steps 1"):
        TrainLoop(_Regression(), TrainConfig(batch_size=8), "unused", _make, _prepare,
                  device=torch.device("cpu"), dist=DistInfo(rank=0, world_size=3))  # fmt: skip
    with pytest.raises(ConfigError, match="grad_accum_steps 2"):
        TrainConfig(batch_size=3, grad_accum_steps=2)


def test_accumulated_micro_batches_make_the_same_step_as_one_batch(tmp_path: Path) -> None:
    """2 micro-batches of 4 = one batch of 8: same logged (global mean) losses and weights; and since the
    checkpoint key ignores how a step is executed, a run may switch to accumulation on resume."""
    base = dict(lr=0.05, steps_per_epoch=6, batch_size=8, save_every=3, seed=1, grad_clip=0.5)
    whole = _loop(tmp_path / "whole", TrainConfig(**base))  # type: ignore[arg-type]
    split = _loop(tmp_path / "split", TrainConfig(**base, grad_accum_steps=2))  # type: ignore[arg-type]
    a, b = whole.run(), split.run()
    assert len(set(a.losses)) == 6
    np.testing.assert_allclose(b.losses, a.losses, rtol=1e-6)
    for k, v in whole.params.items():
        torch.testing.assert_close(split.params[k], v, rtol=1e-6, atol=1e-7)
    _loop(tmp_path / "switched", TrainConfig(**base)).run(stop_after=3)  # type: ignore[arg-type]
    switched = _loop(tmp_path / "switched", TrainConfig(**base, grad_accum_steps=4)).run()  # type: ignore[arg-type]
    assert switched.resumed_from == 3 and switched.info["grad_accum_steps"] == 4
    np.testing.assert_allclose(switched.losses, a.losses, rtol=1e-6)


def test_run_log_lines_plot_and_truncation_on_resume(tmp_path: Path) -> None:
    """One JSONL line per log_every steps; a run killed after logging past its last checkpoint resumes from that
    checkpoint, drops the lines it will write again (and a torn line), and ends with the straight run's lines."""
    cfg = TrainConfig(lr=0.05, steps_per_epoch=10, batch_size=4, save_every=4, log_every=2, seed=2)
    straight = _loop(tmp_path / "straight", cfg).run()
    lines = read_run_log(tmp_path / "straight" / RUN_LOG_FILE)
    assert [r["step"] for r in lines] == [2, 4, 6, 8, 10]
    assert lines[0]["loss"] == pytest.approx(sum(straight.losses[:2]) / 2)
    assert lines[-1]["lr"] == pytest.approx(lr_at(9, cfg)) and all(r["world_size"] == 1 for r in lines)
    assert all(r["seconds_per_step"] > 0 and r["samples_per_s"] > 0 for r in lines)
    assert lines[0]["memory"] == "rss" and lines[0]["peak_memory_mib"] > 10  # a Python process with torch
    png = (tmp_path / "straight" / CURVE_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000

    run = tmp_path / "killed"
    _loop(run, cfg).run(stop_after=4)  # checkpoint at step 4
    saved = (run / STATE_FILE).read_bytes()
    _loop(run, cfg).run(stop_after=3)  # logs steps 6 (and trains to 7), then "dies" ...
    (run / STATE_FILE).write_bytes(saved)  # ... before its next checkpoint: the state on disk is step 4's
    with open(run / RUN_LOG_FILE, "a") as fh:
        fh.write('{"step": 8, "lo')  # a line torn by the kill
    assert [r.get("step") for r in read_run_log_lenient(run / RUN_LOG_FILE)] == [2, 4, 6]
    resumed = _loop(run, cfg).run()
    assert resumed.resumed_from == 4 and resumed.losses == straight.losses
    again = read_run_log(run / RUN_LOG_FILE)
    assert [r["step"] for r in again] == [2, 4, 6, 8, 10]
    assert [r["loss"] for r in again] == [r["loss"] for r in lines]
    assert resumed.info["world_sizes"] == [{"from_step": 0, "world_size": 1}]


def read_run_log_lenient(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out
