"""A compact 3-D CNN that embeds a preprocessed CT into the text encoder's space ("shared-space encoder").

Input: ``(n, 1, I, J, K)`` float tensors in [0, 1] — CTs after the project's preprocessing (RAS, fixed spacing,
HU window [-1000, 1000] -> [0, 1], fixed grid; see ``ctrag.encoders.preprocess``). A strided stem and residual
stages built from MONAI blocks shrink the volume; global average + max pooling make the result independent of the
input size (training uses random crops, inference the whole volume); an MLP head maps the pooled features to
``embed_dim``, the text encoder's dimension, so a volume vector can be compared with report vectors by inner
product.

At the scale this repository can train (a handful of CTs on two CPU cores) this tower demonstrates the code path;
it is not a CT-RATE-scale encoder. The same class scales by widening ``channels`` and training on more data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ctrag.errors import InvalidInputError


@dataclass(frozen=True)
class VolumeTowerConfig:
    """Architecture of ``VolumeTower`` (stored with every checkpoint)."""

    channels: tuple[int, ...] = (16, 32, 64, 96)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    subunits: int = 2
    num_groups: int = 8
    head_hidden: int = 256
    embed_dim: int = 384
    dropout: float = 0.0
    in_channels: int = 1

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.strides) or not self.channels:
            raise ValueError(
                f"VolumeTowerConfig: channels {self.channels} and strides {self.strides} need the same non-zero length"
            )
        if any(c % min(self.num_groups, c) for c in self.channels):
            raise ValueError(
                f"VolumeTowerConfig: every channel count must be divisible by num_groups={self.num_groups}"
            )
        if self.embed_dim <= 0 or self.head_hidden <= 0:
            raise ValueError("VolumeTowerConfig: embed_dim and head_hidden must be positive")

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["strides"] = list(self.strides)
        return d


def _norm(channels: int, groups: int) -> tuple[str, dict[str, int]]:
    return ("group", {"num_groups": min(groups, channels)})


class VolumeTower(nn.Module):
    """Strided stem + MONAI residual units + avg/max pooling + MLP projection head."""

    def __init__(self, cfg: VolumeTowerConfig) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution, ResidualUnit

        self.cfg = cfg
        c0 = cfg.channels[0]
        self.stem = Convolution(
            spatial_dims=3,
            in_channels=cfg.in_channels,
            out_channels=c0,
            strides=cfg.strides[0],
            kernel_size=3,
            act="GELU",
            norm=_norm(c0, cfg.num_groups),
        )
        stages = []
        for c_in, c_out, stride in zip(cfg.channels[:-1], cfg.channels[1:], cfg.strides[1:], strict=True):
            stages.append(
                ResidualUnit(
                    spatial_dims=3,
                    in_channels=c_in,
                    out_channels=c_out,
                    strides=stride,
                    kernel_size=3,
                    subunits=cfg.subunits,
                    act="GELU",
                    norm=_norm(c_out, cfg.num_groups),
                    dropout=cfg.dropout or None,
                )
            )
        self.stages = nn.Sequential(*stages)
        feat = 2 * cfg.channels[-1]
        self.head = nn.Sequential(
            nn.LayerNorm(feat),
            nn.Linear(feat, cfg.head_hidden),
            nn.GELU(),
            nn.Linear(cfg.head_hidden, cfg.embed_dim),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (n, 2 * channels[-1])."""
        h = self.stages(self.stem(x))
        return torch.cat((h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised embeddings (n, embed_dim); callers L2-normalise (the loss and ``encode_volume`` do)."""
        check_volume_batch(x, self.cfg.in_channels)
        return self.head(self.features(x))


def check_volume_batch(
    x: torch.Tensor, channels: int = 1, value_range: tuple[float, float] = (0.0, 1.0), *, min_depth: int = 8
) -> None:
    """Fail early, naming the problem, on tensors that are not preprocessed CT batches.

    ``min_depth`` is the fewest K-slices accepted (towers that pad the depth themselves, like SigVLP, pass 1)."""
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"expected a torch.Tensor of volumes, got {type(x).__name__}")
    if x.ndim != 5 or x.shape[1] != channels:
        raise InvalidInputError(
            f"expected volumes shaped (n, {channels}, D, H, W), got {tuple(x.shape)}; add the batch/channel axes"
        )
    if min(x.shape[2:4]) < 8 or x.shape[4] < min_depth:
        raise InvalidInputError(
            f"volume grid {tuple(x.shape[2:])} is too small for the encoder (min 8 in-plane, {min_depth} slices)"
        )
    if not x.is_floating_point():
        raise InvalidInputError(f"volumes must be floating point, got {x.dtype}")
    lo, hi = value_range
    x_min, x_max = float(x.min()), float(x.max())
    tol = 1e-3 * (hi - lo)
    if x_min < lo - tol or x_max > hi + tol:
        raise InvalidInputError(
            f"volume values {x_min:.3g}..{x_max:.3g} lie outside [{lo}, {hi}]; pass preprocessed CT "
            "(HU clipped and rescaled), not raw Hounsfield units"
        )
