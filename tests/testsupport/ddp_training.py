"""Training workers that join a torchrun-style process group (gloo on CPU), spawned by the multi-process tests.

They live here rather than in a test module so spawned children import them by a plain module name. Each sets the
environment variables torchrun (or ``accelerate launch``) would set, then calls the library as a user's
``torchrun --nproc-per-node N -m ctrag.cli train ...`` would."""

from __future__ import annotations

import os
import socket
from typing import Any

import torch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def controlnet_worker(rank: int, world: int, port: int, run: str, overrides: tuple[str, ...], cases: Any) -> None:
    """Rank ``rank`` of ``world``: (resume) ``train_controlnet`` on the tiny preset with ``overrides``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from ctrag.generation.training import train_controlnet
    from testsupport.generation_data import tiny_config

    try:
        train_controlnet(None, tiny_config(*overrides), run, cases=cases)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def reporter_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank ``rank`` of ``world``: AdaRAG-CT training on 12 real CT-RATE train reports (tiny LM), then a digest
    of this rank's trained weights and its loss curve written to ``out/rank{rank}.json``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import json
    from pathlib import Path

    from ctrag.encoders.clip import state_dict_sha256
    from ctrag.reporting.adarag import AdaRAGConfig
    from ctrag.reporting.lm import TinyDecoderConfig
    from ctrag.reporting.training.adarag import AdaRAGTrainConfig, train_adarag
    from ctrag.reporting.visual import VisualConfig
    from testsupport.index_data import read_ct_rate

    try:
        cfg = AdaRAGTrainConfig(
            steps=2, batch_size=4, lm=TinyDecoderConfig(vocab_size=300, n_layer=1, n_head=2, n_embd=32),
            visual=VisualConfig(size=(32, 32, 16), patch_size=(16, 16, 16), geometry_size=(16, 16, 8),
                                tower_channels=(8, 8), tower_strides=(2, 2)),
            model=AdaRAGConfig(max_new_tokens=4),
        )  # fmt: skip
        model, _, summary = train_adarag(read_ct_rate("train", 12), cfg)
        digest = state_dict_sha256({k: v for k, v in model.state_dict().items() if v.dtype.is_floating_point})
        record = {"digest": digest, "runtime": summary["runtime"], "loss_first": summary["loss_first"]}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
