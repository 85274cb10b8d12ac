"""One ControlNet training step of a preset's networks (``text2ct-512`` by default): seconds and peak memory per
batch size, under the preset's precision and gradient checkpointing, with and without checkpointing as baseline.

Issue 12 asks for this figure on one H100/H200-class GPU (bf16, batch 1 and 2). The networks are the preset's own
(frozen UNet, trainable ControlNet copied from it) with seeded random weights: a step costs the same FLOPs whatever
the weights hold. Inputs are random latents / one-hot masks of the preset's training crop (a 512x512x128 crop is a
4x128x128x32 latent). Each row runs in a fresh process so that its peak memory is its own.

    python benchmarks/bench_train_step_gpu.py --device cuda --out benchmarks/results            # the GPU figures
    python benchmarks/bench_train_step_gpu.py --config tiny-cpu --device cpu --out /tmp/bench   # a CPU smoke run
    python benchmarks/bench_train_step_gpu.py --device cpu --batches 1 --steps 1 --out /tmp/bench \
        --set train_controlnet.crop_shape=[64,64,32] --set train_controlnet.precision=fp32  # small crop
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, peak_rss_mb, write_result


def one_row(
    config: str, device_name: str, batch: int, checkpointing: bool, steps: int, sets: list[str]
) -> dict[str, Any]:
    from ctrag.data.labels import num_labels
    from ctrag.generation.config import load_generator_config
    from ctrag.generation.controlnet import controlnet_from_unet
    from ctrag.generation.networks import (
        build_unet,
        enable_grad_checkpointing,
        extra_unet_inputs,
        mask_channels,
        seeded_init,
    )
    from ctrag.generation.training.engine import autocast_context
    from ctrag.generation.training.objectives import FlowObjective

    cfg = load_generator_config(config, sets)
    train = cfg.train_controlnet
    device = torch.device(device_name)
    with seeded_init(0):
        unet = build_unet(cfg.diffusion)
        cn = controlnet_from_unet(unet, cfg.diffusion, cfg.controlnet, num_labels(cfg.controlnet.label_set))
    for p in unet.parameters():
        p.requires_grad_(False)
    if checkpointing:
        enable_grad_checkpointing(unet)
        enable_grad_checkpointing(cn)
    dim = cfg.diffusion.cross_attention_dim or 1
    objective = FlowObjective(unet, torch.zeros(1, 1, dim), False, "l1", controlnet=cn).to(device)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    latent = tuple(s // cfg.vae.downsample for s in train.crop_shape)
    mask_grid = tuple(s // cfg.controlnet.mask_pool for s in train.crop_shape)
    n_mask = mask_channels(cfg.controlnet, num_labels(cfg.controlnet.label_set))
    gen = torch.Generator().manual_seed(0)
    c = cfg.vae.latent_channels

    def inputs() -> dict[str, Any]:
        return {
            "x_t": torch.randn((batch, c, *latent), generator=gen).to(device),
            "timesteps": (torch.rand(batch, generator=gen) * 1000).to(device),
            "target": torch.randn((batch, c, *latent), generator=gen).to(device),
            "context": torch.randn((batch, 1, dim), generator=gen).to(device),
            "drop": torch.zeros(batch, dtype=torch.bool, device=device),
            "mask_input": torch.randn((batch, n_mask, *mask_grid), generator=gen).softmax(1).to(device),
            "unet_extra": extra_unet_inputs(cfg.diffusion, batch, cfg.preprocess.spacing, device),
        }

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for i in range(steps + 1):  # the first step (allocator, cuDNN autotune) is not timed
        batch_inputs = inputs()
        sync()
        t0 = time.perf_counter()
        with autocast_context(device, train.precision):
            loss = objective(**batch_inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        if i:
            times.append(time.perf_counter() - t0)
    row: dict[str, Any] = {
        "config": config,
        "batch": batch,
        "grad_checkpointing": checkpointing,
        "precision": train.precision,
        "crop_shape": list(train.crop_shape),
        "latent_shape": [c, *latent],
        "seconds_per_step": min(times),
        "seconds_per_step_all": times,
        "trainable_params": sum(p.numel() for p in params),
        "loss": float(loss.detach()),
    }
    if device.type == "cuda":
        row["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="text2ct-512")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (the fastest counts)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override, e.g. a smaller crop")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.row:  # a child process: one row, printed as JSON
        batch, ck = args.row.split(":")
        print(json.dumps(one_row(args.config, args.device, int(batch), ck == "1", args.steps, args.sets)))
        return 0
    rows: list[dict[str, Any]] = []
    for batch in (int(b) for b in args.batches.split(",")):
        for ck in (True, False):
            cmd = [sys.executable, __file__, "--config", args.config, "--device", args.device, "--steps",
                   str(args.steps), "--out", args.out, "--row", f"{batch}:{int(ck)}",
                   *[x for o in args.sets for x in ("--set", o)]]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:  # out of memory without checkpointing is a result, not a crash
                tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
                rows.append({"batch": batch, "grad_checkpointing": ck, "error": tail[0]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1])[:300], flush=True)
    figures = {"device": args.device, "overrides": args.sets, "rows": rows}
    path = write_result(args.out, f"train_step_{args.config}", figures)
    print(path, machine_info().get("gpu", "no GPU"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
