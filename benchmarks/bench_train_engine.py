"""Seconds per ControlNet training step of the tiny-cpu networks: with and without gradient checkpointing, and on
1 vs 2 gloo processes (same global batch). Synthetic latents and masks (the step's cost does not depend on them).

    python benchmarks/bench_train_engine.py --steps 6 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from ctrag.data.labels import num_labels
from ctrag.generation.config import load_generator_config
from ctrag.generation.controlnet import controlnet_from_unet
from ctrag.generation.networks import build_unet, enable_grad_checkpointing, mask_channels, seeded_init
from ctrag.generation.training.engine import TrainLoop, setup_distributed
from ctrag.generation.training.objectives import FlowObjective


def _make(step: int, gens: Sequence[torch.Generator]) -> Mapping[str, Any]:
    return {"g": list(gens)}


def _prepare(cfg: Any) -> Any:
    n_mask = mask_channels(cfg.controlnet, num_labels(cfg.controlnet.label_set))

    def prepare(batch: Mapping[str, Any], dev: torch.device, gens: Sequence[torch.Generator]) -> dict[str, Any]:
        def each(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.stack([torch.randn(shape, generator=g) for g in gens])

        b = len(gens)
        return {
            "x_t": each((4, 16, 16, 8)),
            "timesteps": torch.cat([torch.rand(1, generator=g) * 1000 for g in gens]),
            "target": each((4, 16, 16, 8)),
            "context": each((1, 384)),
            "drop": torch.zeros(b, dtype=torch.bool),
            "mask_input": each((n_mask, 32, 32, 16)).softmax(1),  # after mask_pool 2
        }

    return prepare


def one_run(steps: int, checkpointing: bool, out: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    sets = [f"train_controlnet.steps_per_epoch={steps}", "train_controlnet.batch_size=4"]
    cfg = load_generator_config("tiny-cpu", sets)
    dist, device = setup_distributed("cpu")
    with seeded_init(0):
        unet = build_unet(cfg.diffusion)
        cn = controlnet_from_unet(unet, cfg.diffusion, cfg.controlnet, num_labels(cfg.controlnet.label_set))
    for p in unet.parameters():
        p.requires_grad_(False)
    if checkpointing:
        enable_grad_checkpointing(unet)
        enable_grad_checkpointing(cn)
    objective = FlowObjective(unet, torch.zeros(1, 1, 384), False, "l1", controlnet=cn)
    loop = TrainLoop(objective, cfg.train_controlnet, out, _make, _prepare(cfg), device=device, dist=dist)
    loop.run(stop_after=1, resume=False)  # warm-up step
    t0 = time.perf_counter()
    result = loop.run()
    per_step = (time.perf_counter() - t0) / max(1, result.steps - 1)
    return {"seconds_per_step": per_step, "losses": result.losses, "world_size": dist.world_size}


def _worker(rank: int, world: int, port: int, steps: int, checkpointing: bool, out: str, result: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))  # fmt: skip
    r = one_run(steps, checkpointing, out)
    if rank == 0:
        result.update(r)
    torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ck in (False, True):
            r = one_run(args.steps, ck, f"{tmp}/one_{ck}")
            rows.append({"processes": 1, "grad_checkpointing": ck, **r})
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        manager = mp.Manager()
        shared = manager.dict()
        mp.spawn(_worker, args=(2, port, args.steps, False, f"{tmp}/two", shared), nprocs=2, join=True)
        rows.append({"processes": 2, "grad_checkpointing": False, **dict(shared)})
    write_result(args.out, "train_engine", {"preset": "tiny-cpu", "global_batch": 4, "rows": rows})
    for r in rows:
        print(r["processes"], r["grad_checkpointing"], round(r["seconds_per_step"], 3), r["losses"][-1])


if __name__ == "__main__":
    main()
