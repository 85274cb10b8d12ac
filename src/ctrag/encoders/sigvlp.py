"""SigVLP-style volume tower: a CT of any slice count as a sequence of z-chunks with rotary positions.

Why: CT studies differ in slice count and thickness; a fixed input depth forces a crop (the ends of a long scan
are lost) or a z-resize (thin findings are smeared). SigVLP (``/work/shared/papers/medical-retrieval-abstracts.txt``,
abstract 8) treats the z-axis as an unconstrained sequence instead: the volume is cut into 3-D chunks, each chunk
is embedded on its own, and a transformer combines the chunk tokens with Rotary Position Embeddings (RoPE) applied
inside attention. RoPE rotates queries and keys by an angle proportional to the position, so an attention score
depends only on the *offset* between two chunks, never on an absolute index: the same weights read 3 chunks or
300, and nothing is learnt per absolute position that a longer scan would lack.

Layout and spacing: the input is ``(n, 1, I, J, K)`` in [0, 1] on the encoder's grid (RAS; K runs inferior to
superior), preprocessed with ``resize_mode="pad_crop_xy"`` so the spacing is fixed in all three axes and the
in-plane size is fixed, but every slice is kept. A chunk is ``chunk_slices`` consecutive K-slices, i.e. always
the same thickness in mm. The last chunk is zero-padded (0 = -1000 HU, air) and the padding is recorded in
``slice_mask``; a chunk with no real slice is masked out of attention and pooling, so a scan thinner than one
chunk, and a batch of scans with different slice counts, both work.

Output: one pooled embedding per volume in the text encoder's space, plus one embedding per chunk through the
same head (used by the chunk <-> region-sentence alignment loss, ``ctrag.encoders.chunk_align``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctrag.encoders.volume import check_volume_batch
from ctrag.errors import InvalidInputError

TOWER_TYPE = "sigvlp"


@dataclass(frozen=True)
class SigVLPConfig:
    """Architecture of ``SigVLPTower`` (stored with every checkpoint)."""

    #: K-slices per chunk at the encoder's z spacing (4 mm in tiny-cpu: 8 slices = 32 mm of body per chunk).
    chunk_slices: int = 8
    channels: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    subunits: int = 1
    num_groups: int = 8
    d_model: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    rope_base: float = 10000.0
    head_hidden: int = 256
    embed_dim: int = 384
    dropout: float = 0.0
    in_channels: int = 1

    def __post_init__(self) -> None:
        if self.chunk_slices < 1:
            raise ValueError(f"SigVLPConfig: chunk_slices must be >= 1, got {self.chunk_slices}")
        if len(self.channels) != len(self.strides) or not self.channels:
            raise ValueError(
                f"SigVLPConfig: channels {self.channels} and strides {self.strides} need the same non-zero length"
            )
        if any(c % min(self.num_groups, c) for c in self.channels):
            raise ValueError(f"SigVLPConfig: every channel count must be divisible by num_groups={self.num_groups}")
        if self.heads < 1 or self.d_model % self.heads or (self.d_model // self.heads) % 2:
            raise ValueError(
                f"SigVLPConfig: d_model={self.d_model} must split into {self.heads} heads of even size (RoPE rotates "
                "pairs of features)"
            )
        if self.depth < 1 or self.embed_dim <= 0 or self.head_hidden <= 0 or self.mlp_ratio <= 0:
            raise ValueError("SigVLPConfig: depth, embed_dim, head_hidden and mlp_ratio must be positive")
        if self.rope_base <= 1.0:
            raise ValueError(f"SigVLPConfig: rope_base must be > 1, got {self.rope_base}")

    @property
    def dim_head(self) -> int:
        return self.d_model // self.heads

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["strides"] = list(self.strides)
        return d


# --- rotary position embedding -------------------------------------------------------------------------------


def rope_angles(positions: torch.Tensor, dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, shaped ``(*positions.shape, dim // 2)``, computed on the fly from (possibly fractional) positions.

    Frequencies follow Su et al. (RoFormer, arXiv:2104.09864): ``base ** (-2i / dim)``. Nothing is tabulated, so
    any position (and any sequence length) is valid.
    """
    if dim % 2:
        raise InvalidInputError(f"rope_angles: dim must be even, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive feature pairs of ``x`` (``(..., L, dim)``) by the angles of their positions.

    ``<R(p) q, R(p') k> = <q, R(p' - p) k>``: the dot product of a rotated query and key depends on the offset only.
    """
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


class RopeSelfAttention(nn.Module):
    """Multi-head self-attention over chunk tokens with RoPE on queries and keys and a key-padding mask."""

    def __init__(self, d_model: int, heads: int, rope_base: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = d_model // heads
        self.rope_base = rope_base
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, length, _ = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        cos, sin = rope_angles(positions, self.dim_head, self.rope_base)  # (n, L, dh/2)
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def logits(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Pre-softmax attention scores ``(n, heads, L, L)`` (what RoPE's relative-offset property is about)."""
        q, k, _ = self._qkv(x, positions)
        return (q @ k.transpose(-1, -2)) / math.sqrt(self.dim_head)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x, positions)
        attn_mask = key_mask[:, None, None, :]  # True = may be attended to
        h = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(h.transpose(1, 2).reshape(x.shape))


class RopeBlock(nn.Module):
    """Pre-norm transformer block (attention + MLP), residual around each."""

    def __init__(self, cfg: SigVLPConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = RopeSelfAttention(cfg.d_model, cfg.heads, cfg.rope_base, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        hidden = max(1, round(cfg.d_model * cfg.mlp_ratio))
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(hidden, cfg.d_model)
        )

    def forward(self, x: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), positions, key_mask)
        return x + self.mlp(self.norm2(x))


# --- the tower -----------------------------------------------------------------------------------------------


@dataclass
class SigVLPOutput:
    """Everything one forward pass knows: pooled and per-chunk embeddings and which chunks/slices are real."""

    embedding: torch.Tensor  # (n, embed_dim), un-normalised
    chunk_embeddings: torch.Tensor  # (n, C, embed_dim), un-normalised; padded chunks are meaningless
    chunk_mask: torch.Tensor  # (n, C) bool: chunk holds at least one real slice
    slice_mask: torch.Tensor  # (n, C * chunk_slices) bool: real (not padded) slices


def pad_depth(
    x: torch.Tensor, chunk_slices: int, slice_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the K axis of ``(n, c, I, J, K)`` to a whole number of chunks (at least one); return the slice mask."""
    n, k = x.shape[0], x.shape[-1]
    if slice_mask is None:
        slice_mask = torch.ones((n, k), dtype=torch.bool, device=x.device)
    elif slice_mask.shape != (n, k):
        raise InvalidInputError(f"slice_mask must be shaped ({n}, {k}) for volumes {tuple(x.shape)}, got "
                                f"{tuple(slice_mask.shape)}")  # fmt: skip
    if not bool(slice_mask.any(dim=1).all()):
        raise InvalidInputError("every volume needs at least one real slice (slice_mask is all False for one)")
    chunks = max(1, math.ceil(k / chunk_slices))
    extra = chunks * chunk_slices - k
    if extra:
        x = F.pad(x, (0, extra))
        slice_mask = F.pad(slice_mask, (0, extra), value=False)
    return x, slice_mask.bool()


class SigVLPTower(nn.Module):
    """Chunk stem (3-D CNN per z-chunk) -> RoPE transformer over chunks -> masked mean pool -> projection head."""

    def __init__(self, cfg: SigVLPConfig) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution, ResidualUnit

        self.cfg = cfg
        norm = ("group", {"num_groups": min(cfg.num_groups, cfg.channels[0])})
        layers: list[nn.Module] = [
            Convolution(
                spatial_dims=3,
                in_channels=cfg.in_channels,
                out_channels=cfg.channels[0],
                strides=cfg.strides[0],
                kernel_size=3,
                act="GELU",
                norm=norm,
            )
        ]
        for c_in, c_out, stride in zip(cfg.channels[:-1], cfg.channels[1:], cfg.strides[1:], strict=True):
            layers.append(
                ResidualUnit(
                    spatial_dims=3,
                    in_channels=c_in,
                    out_channels=c_out,
                    strides=stride,
                    kernel_size=3,
                    subunits=cfg.subunits,
                    act="GELU",
                    norm=("group", {"num_groups": min(cfg.num_groups, c_out)}),
                    dropout=cfg.dropout or None,
                )
            )
        self.stem = nn.Sequential(*layers)
        self.to_token = nn.Linear(2 * cfg.channels[-1], cfg.d_model)
        self.blocks = nn.ModuleList(RopeBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.head_hidden),
            nn.GELU(),
            nn.Linear(cfg.head_hidden, cfg.embed_dim),
        )

    def check_input(self, x: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> None:
        """Same checks as the CNN tower, except that any slice count >= 1 is accepted."""
        check_volume_batch(x, self.cfg.in_channels, value_range, min_depth=1)

    def chunk_tokens(self, x: torch.Tensor, slice_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(tokens (n, C, d_model) before the transformer, chunk_mask (n, C), slice_mask (n, C * chunk_slices))."""
        cs = self.cfg.chunk_slices
        x, slice_mask = pad_depth(x, cs, slice_mask)
        n, c, i, j, k = x.shape
        chunks = k // cs
        # (n, c, I, J, C, cs) -> (n * C, c, I, J, cs): each chunk is an independent small volume for the stem
        flat = x.view(n, c, i, j, chunks, cs).permute(0, 4, 1, 2, 3, 5).reshape(n * chunks, c, i, j, cs)
        h = self.stem(flat)
        pooled = torch.cat((h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))), dim=1)
        tokens = self.to_token(pooled).view(n, chunks, -1)
        chunk_mask = slice_mask.view(n, chunks, cs).any(dim=2)
        return tokens, chunk_mask, slice_mask

    def encode(
        self, x: torch.Tensor, slice_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
    ) -> SigVLPOutput:
        """Full forward pass; ``positions`` (n, C) overrides the chunk indices 0..C-1 (tests, or mm-based positions)."""
        self.check_input(x)
        tokens, chunk_mask, slice_mask = self.chunk_tokens(x, slice_mask)
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=x.device, dtype=torch.float32).expand(x.shape[0], -1)
        elif positions.shape != chunk_mask.shape:
            raise InvalidInputError(f"positions must be shaped {tuple(chunk_mask.shape)}, got {tuple(positions.shape)}")
        h = tokens
        for block in self.blocks:
            h = block(h, positions, chunk_mask)
        h = self.norm(h)
        weights = chunk_mask.to(h.dtype)[..., None]
        pooled = (h * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return SigVLPOutput(
            embedding=self.head(pooled),
            chunk_embeddings=self.head(h),
            chunk_mask=chunk_mask,
            slice_mask=slice_mask,
        )

    def forward(self, x: torch.Tensor, slice_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Un-normalised embeddings (n, embed_dim), like ``VolumeTower.forward``."""
        return self.encode(x, slice_mask).embedding


def sigvlp_config_from_dict(tower: dict[str, object], embed_dim: int | None = None) -> SigVLPConfig:
    """``SigVLPConfig`` from an architecture JSON's ``tower`` section (lists become tuples)."""
    data = dict(tower)
    data.pop("tower_type", None)
    for key in ("channels", "strides"):
        if key in data:
            data[key] = tuple(data[key])  # type: ignore[arg-type]
    if embed_dim is not None:
        data["embed_dim"] = embed_dim
    try:
        return SigVLPConfig(**data)  # type: ignore[arg-type]
    except TypeError as exc:
        raise InvalidInputError(f"sigvlp tower config: {exc}") from exc
