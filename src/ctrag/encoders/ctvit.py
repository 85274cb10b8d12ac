"""The encoder half of CTViT (CT-CLIP's volume tower), written in plain torch so CT-CLIP weights load here.

CT-CLIP (Hamamci et al., "Developing Generalist Foundation Models from a Multimodal Dataset for 3D Computed
Tomography", arXiv:2403.17834) encodes a 1x240x480x480 volume with CTViT from the ``transformer_maskgit``
package: 3-D patches (10 slices x 20 x 20 pixels) -> linear embedding -> factorised transformer (spatial attention
within each slab with a continuous relative position bias, then temporal attention along the slab axis; both with
a causal depth-wise conv position generator, "PEG") -> cosine-similarity vector quantiser. CT-CLIP then averages
the quantised token grid over its first axis, flattens it (24*24*512 = 294,912 values) and projects it to the
512-d latent with ``to_visual_latent``.

Only what the forward pass of the *encoder* needs is implemented (no decoder, GAN, VGG or codebook training).
Module names are our own; ``map_ctvit_keys`` translates the upstream checkpoint names explicitly and reports the
keys it drops on purpose (decoder, discriminator, codebook statistics), so loading stays strict. Behaviour that
looks accidental upstream is reproduced on purpose because the released weights were trained with it: keys and
values of attention are computed from the *un-normalised* input (only queries see the pre-norm), and the temporal
PEG reinterprets its ``(b*h*w, t, d)`` input as ``(b, t, h, w, d)`` by a plain reshape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctrag.errors import CheckpointMismatchError


@dataclass(frozen=True)
class CTViTConfig:
    """Architecture of the released CT-CLIP volume tower (defaults = ``scripts/run_zero_shot.py`` upstream)."""

    dim: int = 512
    image_size: int = 480
    frames: int = 240
    patch_size: int = 20
    temporal_patch_size: int = 10
    spatial_depth: int = 4
    temporal_depth: int = 4
    dim_head: int = 32
    heads: int = 8
    codebook_size: int = 8192
    ff_mult: float = 4.0
    channels: int = 1

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size or self.frames % self.temporal_patch_size:
            raise ValueError(
                f"CTViTConfig: image_size {self.image_size} / patch_size {self.patch_size} and frames {self.frames} "
                f"/ temporal_patch_size {self.temporal_patch_size} must divide evenly"
            )

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (t, h, w)."""
        side = self.image_size // self.patch_size
        return self.frames // self.temporal_patch_size, side, side

    @property
    def pooled_features(self) -> int:
        """Length of the flattened, slab-averaged token grid (CT-CLIP's ``dim_image``)."""
        _, h, w = self.grid
        return h * w * self.dim

    @property
    def ff_inner(self) -> int:
        return int(self.ff_mult * (2 / 3) * self.dim)


class _GEGLUFeedForward(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, inner * 2, bias=False)
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(F.gelu(gate) * value)


class _CausalPEG(nn.Module):
    """Depth-wise 3x3x3 conv over the (t, h, w) token grid, padded causally along t."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: torch.Tensor, grid_shape: tuple[int, int, int, int]) -> torch.Tensor:
        orig = x.shape
        y = x.reshape(*grid_shape, -1).permute(0, 4, 1, 2, 3)  # (b, d, t, h, w)
        y = F.pad(y, (1, 1, 1, 1, 2, 0))
        y = self.conv(y).permute(0, 2, 3, 4, 1)
        return y.reshape(orig)


class _CosineAttention(nn.Module):
    """Multi-head attention on l2-normalised queries/keys with learned per-dim scales and a fixed gain of 8."""

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.gain = 8.0

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(x).chunk(2, dim=-1)  # from the un-normalised input, as the released weights expect

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, -1).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        sim = (q @ k.transpose(-1, -2)) * self.gain
        if bias is not None:
            sim = sim + bias
        out = sim.softmax(dim=-1) @ v
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _Block(nn.Module):
    def __init__(self, cfg: CTViTConfig) -> None:
        super().__init__()
        self.peg = _CausalPEG(cfg.dim)
        self.attn = _CosineAttention(cfg.dim, cfg.dim_head, cfg.heads)
        self.ff = _GEGLUFeedForward(cfg.dim, cfg.ff_inner)

    def forward(
        self, x: torch.Tensor, grid_shape: tuple[int, int, int, int], bias: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.peg(x, grid_shape) + x
        x = self.attn(x, bias) + x
        return self.ff(x) + x


class _FactorTransformer(nn.Module):
    def __init__(self, cfg: CTViTConfig, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(depth))
        self.norm_out = nn.LayerNorm(cfg.dim)

    def forward(
        self, x: torch.Tensor, grid_shape: tuple[int, int, int, int], bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, grid_shape, bias)
        return self.norm_out(x)


class _ContinuousPositionBias(nn.Module):
    """MLP from log-scaled 2-D relative offsets to one attention bias per head (Swin-v2 style)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(2, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, heads)

    def forward(self, h: int, w: int) -> torch.Tensor:
        device = self.in_proj.weight.device
        ii, jj = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        grid = torch.stack((ii, jj), dim=-1).reshape(-1, 2).float()
        rel = grid[:, None, :] - grid[None, :, :]
        rel = torch.sign(rel) * torch.log(rel.abs() + 1)
        x = F.leaky_relu(self.in_proj(rel), 0.1)
        x = F.leaky_relu(self.hidden(x), 0.1)
        return self.out_proj(x).permute(2, 0, 1)  # (heads, hw, hw)


class CTViTEncoder(nn.Module):
    """(b, 1, frames, H, W) volume in CT-CLIP units ([-1, 1]) -> quantised token grid (b, t, h, w, dim)."""

    codebook: torch.Tensor

    def __init__(self, cfg: CTViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        patch_dim = cfg.channels * cfg.temporal_patch_size * cfg.patch_size**2
        self.patch_norm_in = nn.LayerNorm(patch_dim)
        self.patch_proj = nn.Linear(patch_dim, cfg.dim)
        self.patch_norm_out = nn.LayerNorm(cfg.dim)
        self.spatial_pos_bias = _ContinuousPositionBias(cfg.dim, cfg.heads)
        self.spatial = _FactorTransformer(cfg, cfg.spatial_depth)
        self.temporal = _FactorTransformer(cfg, cfg.temporal_depth)
        self.register_buffer("codebook", torch.zeros(cfg.codebook_size, cfg.dim))

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, c, f, hh, ww = video.shape
        pt, p = cfg.temporal_patch_size, cfg.patch_size
        x = video.reshape(b, c, f // pt, pt, hh // p, p, ww // p, p)
        # -> (b, t, h, w, c, pt, p1, p2): the upstream patch vector order is (c pt p1 p2)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, f // pt, hh // p, ww // p, -1)
        return self.patch_norm_out(self.patch_proj(self.patch_norm_in(x)))

    def quantise(self, tokens: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entry by cosine similarity; returns the stored (not re-normalised) code vectors."""
        flat = F.normalize(tokens.reshape(-1, tokens.shape[-1]), dim=-1)
        index = (flat @ F.normalize(self.codebook, dim=-1).t()).argmax(dim=-1)
        return self.codebook[index].reshape(tokens.shape)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if video.ndim != 5 or tuple(video.shape[1:]) != (cfg.channels, cfg.frames, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"CTViTEncoder: expected (b, {cfg.channels}, {cfg.frames}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(video.shape)}"
            )
        tokens = self.patchify(video)
        b, t, h, w, d = tokens.shape
        grid_shape = (b, t, h, w)
        bias = self.spatial_pos_bias(h, w)
        x = self.spatial(tokens.reshape(b * t, h * w, d), grid_shape, bias)
        x = x.reshape(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        x = self.temporal(x, grid_shape)
        x = x.reshape(b, h, w, t, d).permute(0, 3, 1, 2, 4)
        return self.quantise(x)

    def pooled(self, video: torch.Tensor) -> torch.Tensor:
        """CT-CLIP's image embedding: token grid averaged over its first axis, flattened -> (b, h*w*dim)."""
        return self.forward(video).mean(dim=1).reshape(video.shape[0], -1)


# --- upstream checkpoint names -> ours ------------------------------------------------------------------------

_TRANSFORMER_RULES: tuple[tuple[str, str], ...] = (
    (r"layers\.(\d+)\.0\.dsconv\.(weight|bias)", r"blocks.\1.peg.conv.\2"),
    (r"layers\.(\d+)\.1\.norm\.gamma", r"blocks.\1.attn.norm.weight"),
    (r"layers\.(\d+)\.1\.norm\.beta", r"blocks.\1.attn.norm.bias"),
    (r"layers\.(\d+)\.1\.(to_q|to_kv|to_out)\.weight", r"blocks.\1.attn.\2.weight"),
    (r"layers\.(\d+)\.1\.(q_scale|k_scale)", r"blocks.\1.attn.\2"),
    (r"layers\.(\d+)\.3\.0\.(weight|bias)", r"blocks.\1.ff.norm.\2"),
    (r"layers\.(\d+)\.3\.1\.weight", r"blocks.\1.ff.proj_in.weight"),
    (r"layers\.(\d+)\.3\.4\.weight", r"blocks.\1.ff.proj_out.weight"),
    (r"norm_out\.gamma", "norm_out.weight"),
    (r"norm_out\.beta", "norm_out.bias"),
)
_TOP_RULES: tuple[tuple[str, str], ...] = (
    (r"to_patch_emb\.1\.(weight|bias)", r"patch_norm_in.\1"),
    (r"to_patch_emb\.2\.(weight|bias)", r"patch_proj.\1"),
    (r"to_patch_emb\.3\.(weight|bias)", r"patch_norm_out.\1"),
    (r"spatial_rel_pos_bias\.net\.0\.0\.(weight|bias)", r"spatial_pos_bias.in_proj.\1"),
    (r"spatial_rel_pos_bias\.net\.1\.0\.(weight|bias)", r"spatial_pos_bias.hidden.\1"),
    (r"spatial_rel_pos_bias\.net\.2\.(weight|bias)", r"spatial_pos_bias.out_proj.\1"),
)
#: Upstream parts the encoder forward pass never uses (decoder, GAN/VGG losses, first-frame path, codebook stats).
CTVIT_UNUSED_PATTERNS: tuple[str, ...] = (
    r"dec_(spatial|temporal)_transformer\..*",
    r"to_pixels(_first_frame)?\..*",
    r"to_patch_emb_first_frame\..*",
    r"discr\..*",
    r"vgg\..*",
    r"vq\._codebook\.(initted|cluster_size|embed_avg)",
    r"enc_(spatial|temporal)_transformer\.layers\.\d+\.1\.context_norm\.(gamma|beta)",
)


def map_ctvit_keys(upstream: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Translate a ``transformer_maskgit.CTViT`` state dict (without the ``visual_transformer.`` prefix).

    Returns ``(ours, dropped, unknown)``: the renamed tensors, the keys dropped on purpose (see
    ``CTVIT_UNUSED_PATTERNS``) and keys nothing accounts for. Callers fail on ``unknown``; nothing is dropped
    silently.
    """
    ours: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in upstream.items():
        if any(re.fullmatch(p, key) for p in CTVIT_UNUSED_PATTERNS):
            dropped.append(key)
            continue
        match = re.fullmatch(r"enc_(spatial|temporal)_transformer\.(.+)", key)
        if match:
            tower, rest = match.groups()
            if re.fullmatch(r"layers\.\d+\.1\.null_kv", rest):
                if value.numel() != 0:
                    raise CheckpointMismatchError(
                        f"{key}: self-attention with {value.shape[1] // 2} null key/values is not supported "
                        "(the released CT-CLIP uses none)"
                    )
                dropped.append(key)
                continue
            new = _apply_rules(rest, _TRANSFORMER_RULES)
            if new is None:
                unknown.append(key)
            else:
                ours[f"{tower}.{new}"] = value
            continue
        if key == "vq._codebook.embed":
            if value.ndim != 3 or value.shape[0] != 1:
                raise CheckpointMismatchError(f"{key}: expected one codebook (1, size, dim), got {tuple(value.shape)}")
            ours["codebook"] = value[0]
            continue
        new = _apply_rules(key, _TOP_RULES)
        if new is None:
            unknown.append(key)
        else:
            ours[new] = value
    return ours, dropped, unknown


def _apply_rules(key: str, rules: tuple[tuple[str, str], ...]) -> str | None:
    for pattern, repl in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def load_ctvit_state(model: CTViTEncoder, upstream: Mapping[str, torch.Tensor]) -> list[str]:
    """Load upstream CTViT weights strictly (after explicit renaming); returns the keys dropped on purpose."""
    ours, dropped, unknown = map_ctvit_keys(upstream)
    expected = set(model.state_dict())
    missing = sorted(expected - set(ours))
    if unknown or missing:
        raise CheckpointMismatchError(
            f"CT-CLIP volume tower: {len(missing)} missing keys {missing[:8]}, "
            f"{len(unknown)} unrecognised keys {sorted(unknown)[:8]}"
        )
    shapes = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(shapes[k].shape)}" for k, v in ours.items() if v.shape != shapes[k].shape]
    if bad:
        raise CheckpointMismatchError(f"CT-CLIP volume tower: shape mismatch (checkpoint vs config): {bad[:8]}")
    model.load_state_dict(ours, strict=True)
    return dropped
