"""Generator training, kept apart from the pipeline (which never imports it).

- ``engine.py``: the resumable, DDP-ready loop (``TrainLoop``), EMA, checkpoints, learning-rate schedule;
- ``objectives.py``: VAE loss and rectified-flow velocity loss, with their batch preparation;
- ``data.py``: training cases in the image space, crops and flips, label maps, the latent bank;
- ``recipes.py``: ``train_vae`` / ``train_diffusion`` / ``train_controlnet``, each writing one run folder.
"""

from __future__ import annotations

from ctrag.generation.training.engine import LOG_FILE, STATE_FILE, TrainLoop, TrainResult
from ctrag.generation.training.recipes import train_controlnet, train_diffusion, train_vae

__all__ = ["LOG_FILE", "STATE_FILE", "TrainLoop", "TrainResult", "train_controlnet", "train_diffusion", "train_vae"]
