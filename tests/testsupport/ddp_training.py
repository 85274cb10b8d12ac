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
