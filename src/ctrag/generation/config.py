"""Typed configs of the generator: networks, sampler and the three training runs.

A preset YAML holds the image space (``preprocess``) and one section per component (``vae``, ``diffusion``,
``controlnet``, ``sampler``, ``train_vae``, ``train_diffusion``, ``train_controlnet``); each loads into one
dataclass below. Architecture
fields mirror the MONAI constructor arguments one to one (``monai.networks.nets`` and
``monai.apps.generation.maisi.networks``), so a config *is* the network description and a checkpoint folder can
be rebuilt from its ``config.json`` alone. The image space (voxel spacing, HU window, grid size) is the
preset's one ``preprocess`` section (``ctrag.data.transforms.PreprocessConfig``); the VAE records the one it was
trained in, so training and sampling cannot disagree on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ctrag.config import apply_overrides, config_to_dict, from_dict, read_yaml, resolve_config_path
from ctrag.data.heldout import HeldOut, held_out_set
from ctrag.data.transforms import PreprocessConfig
from ctrag.errors import ConfigError

Arch = Literal["monai", "maisi"]
LabelSetName = Literal["coarse", "groups", "totalseg"]
MaskEncoding = Literal["onehot", "binary"]
NullEmbedding = Literal["zero", "learned"]
Precision = Literal["fp32", "bf16", "fp16"]

SECTIONS: tuple[str, ...] = (
    "preprocess",
    "vae",
    "diffusion",
    "controlnet",
    "sampler",
    "train_vae",
    "train_diffusion",
    "train_controlnet",
)


@dataclass
class VAEConfig:
    """``AutoencoderKL`` (arch ``monai``) or ``AutoencoderKlMaisi`` (arch ``maisi``) arguments."""

    arch: Arch = "monai"
    in_channels: int = 1
    out_channels: int = 1
    latent_channels: int = 4
    channels: tuple[int, ...] = (8, 16, 32)
    num_res_blocks: tuple[int, ...] = (1, 1, 1)
    norm_num_groups: int = 8
    norm_eps: float = 1e-6
    attention_levels: tuple[bool, ...] = (False, False, False)
    with_encoder_nonlocal_attn: bool = False
    with_decoder_nonlocal_attn: bool = False
    # MAISI-only memory options (ignored by arch "monai")
    use_checkpointing: bool = False
    use_convtranspose: bool = False
    norm_float16: bool = False
    num_splits: int = 1
    dim_split: int = 1

    def __post_init__(self) -> None:
        n = len(self.channels)
        if n < 2:
            raise ConfigError(f"VAEConfig: need at least 2 levels, got channels={self.channels}")
        if len(self.num_res_blocks) != n or len(self.attention_levels) != n:
            raise ConfigError(
                f"VAEConfig: channels {self.channels}, num_res_blocks {self.num_res_blocks} and attention_levels "
                f"{self.attention_levels} must have the same length"
            )
        if any(c % self.norm_num_groups for c in self.channels):
            raise ConfigError(
                f"VAEConfig: every channel count must be a multiple of norm_num_groups={self.norm_num_groups}, "
                f"got {self.channels}"
            )

    @property
    def downsample(self) -> int:
        """Spatial compression factor per axis (each level after the first halves the grid)."""
        return 2 ** (len(self.channels) - 1)


@dataclass
class DiffusionConfig:
    """``DiffusionModelUNet`` / ``DiffusionModelUNetMaisi`` arguments plus how text enters it."""

    arch: Arch = "monai"
    in_channels: int = 4
    out_channels: int = 4
    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: tuple[int, ...] = (1, 1, 1)
    num_head_channels: tuple[int, ...] = (0, 0, 32)
    norm_num_groups: int = 16
    norm_eps: float = 1e-6
    resblock_updown: bool = False
    with_conditioning: bool = True
    cross_attention_dim: int | None = 384
    transformer_num_layers: int = 1
    upcast_attention: bool = False
    include_fc: bool = True
    use_combined_linear: bool = False
    use_flash_attention: bool = False
    num_class_embeds: int | None = None
    """MAISI/Text2CT condition on a modality class (CT = ``class_label``); None for no class input."""
    class_label: int = 1
    include_spacing_input: bool = False
    """MAISI/Text2CT UNets take the output spacing (mm x 100) as an extra embedding."""
    include_top_region_index_input: bool = False
    include_bottom_region_index_input: bool = False
    null_embedding: NullEmbedding = "zero"
    """Context of the unconditional branch of classifier-free guidance: all zeros (Text2CT's choice) or a learned
    vector trained on the dropped-text samples."""

    def __post_init__(self) -> None:
        n = len(self.channels)
        if len(self.attention_levels) != n or len(self.num_res_blocks) != n or len(self.num_head_channels) != n:
            raise ConfigError(
                f"DiffusionConfig: channels {self.channels}, attention_levels {self.attention_levels}, num_res_blocks "
                f"{self.num_res_blocks} and num_head_channels {self.num_head_channels} must have the same length"
            )
        if any(c % self.norm_num_groups for c in self.channels):
            raise ConfigError(
                f"DiffusionConfig: every channel count must be a multiple of norm_num_groups={self.norm_num_groups}, "
                f"got {self.channels}"
            )
        if self.with_conditioning != (self.cross_attention_dim is not None):
            raise ConfigError(
                "DiffusionConfig: with_conditioning=true needs cross_attention_dim (the text embedding size) and "
                f"false needs none; got with_conditioning={self.with_conditioning}, "
                f"cross_attention_dim={self.cross_attention_dim}"
            )
        for level, (attn, heads) in enumerate(zip(self.attention_levels, self.num_head_channels, strict=True)):
            if attn and (heads <= 0 or self.channels[level] % heads):
                raise ConfigError(
                    f"DiffusionConfig: level {level} has attention, so num_head_channels ({heads}) must be positive "
                    f"and divide its channels ({self.channels[level]})"
                )

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)


@dataclass
class ControlNetConfig:
    """The control branch: a copy of the UNet encoder plus a mask encoder and zero-initialised 1x1x1 convs.

    The encoder structure (channels, attention, ...) is always the UNet's; only the mask side is set here.
    The mask encoder is MONAI's ``ControlNetConditioningEmbedding``: ``mask_pool`` first average-pools the one-hot
    mask (cheap, keeps partial-volume fractions), then each entry of ``conditioning_embedding_num_channels`` after
    the first adds a stride-2 convolution. ``mask_pool * 2**(len-1)`` must equal the VAE's compression so the
    features land on the latent grid.
    """

    label_set: LabelSetName = "coarse"
    mask_encoding: MaskEncoding = "onehot"
    """"onehot": one channel per label of ``label_set`` plus background (built per batch, float32);
    "binary": the label id written in ``binary_bits`` bits (MAISI / RAG-Text2CT checkpoints use 8)."""
    binary_bits: int = 8
    mask_pool: int = 1
    conditioning_embedding_num_channels: tuple[int, ...] = (8, 16, 32)
    use_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.mask_pool < 1:
            raise ConfigError(f"ControlNetConfig: mask_pool must be >= 1, got {self.mask_pool}")
        if not self.conditioning_embedding_num_channels:
            raise ConfigError("ControlNetConfig: conditioning_embedding_num_channels must not be empty")
        if self.mask_encoding == "binary" and not 1 <= self.binary_bits <= 16:
            raise ConfigError(f"ControlNetConfig: binary_bits must be in 1..16, got {self.binary_bits}")

    @property
    def downsample(self) -> int:
        return self.mask_pool * 2 ** (len(self.conditioning_embedding_num_channels) - 1)


@dataclass
class SchedulerConfig:
    """Arguments of MONAI's ``RFlowScheduler`` (what ``sampler.json`` stores)."""

    num_train_timesteps: int = 1000
    use_discrete_timesteps: bool = False
    sample_method: Literal["uniform", "logit-normal"] = "logit-normal"
    loc: float = 0.0
    scale: float = 1.0
    use_timestep_transform: bool = False
    transform_scale: float = 1.0
    steps_offset: int = 0
    base_img_size_numel: int = 32 * 32 * 32
    spatial_dim: int = 3


@dataclass
class SamplerConfig:
    """Rectified-flow sampling defaults: steps, guidance, control, decoding, speed options."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    steps: int = 30
    cfg: float = 5.0
    control_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    """Control residuals are applied while the fraction of steps done lies in [control_start, control_end]."""
    output_shape: tuple[int, int, int] | None = None
    """Generated volume size in voxels of the image space's spacing; None (the default) takes the image space's
    ``size``. Must be divisible by the VAE x UNet compression."""
    proxy_center: Literal["lungs", "foreground", "volume"] = "lungs"
    """Where the output grid is centred on a proxy mask: its lungs (chest generation), all labelled voxels, or the
    mask volume's centre."""
    proxy_from: Literal["case-or-segment", "segment-or-case", "case"] = "case-or-segment"
    """Where a retrieved case's proxy comes from: its own mask, else ``ctrag.segment`` of its CT (paper-like);
    the segmentation of its CT when it has one (the labels the ControlNet was trained on), else its mask; or
    only cases with masks."""
    sw_roi: tuple[int, int, int] = (80, 80, 80)
    """Sliding-window VAE decode patch in image voxels (RAG-Text2CT: 80^3, overlap 0.4); volumes that fit one patch
    are decoded in one go."""
    sw_overlap: float = 0.4
    sw_batch_size: int = 1
    sw_mode: Literal["gaussian", "constant"] = "gaussian"
    precision: Precision = "fp32"
    """Autocast dtype for the UNet/ControlNet/VAE forward passes; bf16/fp16 are meant for GPUs."""
    compile: bool = False
    """Wrap the UNet and ControlNet in ``torch.compile`` (pays off on GPU for repeated sampling)."""
    channels_last: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"SamplerConfig: steps must be >= 1, got {self.steps}")
        if self.cfg < 0:
            raise ConfigError(f"SamplerConfig: cfg must be >= 0, got {self.cfg}")
        if not 0.0 <= self.control_start <= self.control_end <= 1.0:
            raise ConfigError(
                f"SamplerConfig: need 0 <= control_start <= control_end <= 1, got {self.control_start}, "
                f"{self.control_end}"
            )
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ConfigError(f"SamplerConfig: sw_overlap must be in [0, 1), got {self.sw_overlap}")


@dataclass
class TrainConfig:
    """Settings shared by the three training runs."""

    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 1
    steps_per_epoch: int = 100
    batch_size: int = 2
    """The global batch of one optimiser step: over all processes and micro-batches (per process and micro-batch
    ``batch_size / (world_size x grad_accum_steps)``, which must divide evenly), so the loss curve does not
    depend on how many GPUs ran it."""
    grad_accum_steps: int = 1
    """Micro-batches per optimiser step and process (gradients accumulated, DDP synchronises on the last)."""
    grad_checkpointing: bool = False
    """Recompute the UNet/ControlNet (VAE: encoder/decoder) blocks in the backward pass instead of keeping their
    activations (``torch.utils.checkpoint``): same loss and gradients, less memory, about one more forward."""
    crop_shape: tuple[int, int, int] = (64, 64, 32)
    """Training crop in image voxels (the VAE's grid); generation uses ``sampler.output_shape``."""
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    min_lr_fraction: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    """0 disables the exponential moving average; otherwise the saved weights are the EMA weights."""
    save_every: int = 50
    """Write a resumable checkpoint every this many steps (and at the end)."""
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    precision: Precision = "fp32"
    compile: bool = False
    channels_last: bool = True
    flip_prob: float = 0.0
    """Probability of a left-right flip per sample; off by default. A flip mirrors the whole CT (heart and aorta
    change sides) and swaps the left/right mask labels with it, but the report keeps its laterality words, so the
    run log records that text and image disagree on the flipped samples."""
    splits: tuple[str, ...] = ("train",)
    """Corpus splits used for training; "test" is refused (held-out evaluation data)."""
    num_threads: int = 0
    """torch intra-op threads on CPU (0 = leave torch's default)."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"{type(self).__name__}: lr must be > 0 and weight_decay >= 0")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1 or self.grad_accum_steps < 1:
            raise ConfigError(
                f"{type(self).__name__}: epochs, steps_per_epoch, batch_size and grad_accum_steps must be >= 1"
            )
        if self.batch_size % self.grad_accum_steps:
            raise ConfigError(
                f"{type(self).__name__}: batch_size {self.batch_size} (the global batch) must be divisible by "
                f"grad_accum_steps {self.grad_accum_steps}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{type(self).__name__}: ema_decay must be in [0, 1), got {self.ema_decay}")
        if "test" in self.splits:
            raise ConfigError(f"{type(self).__name__}: training on the 'test' split is not allowed (held-out data)")
        if self.save_every < 1:
            raise ConfigError(f"{type(self).__name__}: save_every must be >= 1")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ConfigError(f"{type(self).__name__}: flip_prob must be in [0, 1], got {self.flip_prob}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class TrainVAEConfig(TrainConfig):
    kl_weight: float = 1e-6
    edge_weight: float = 0.0
    """Extra L1 weight on voxels above ``edge_hu`` (bone), which a small VAE otherwise smooths away."""
    edge_hu: float = 200.0


@dataclass
class TrainDiffusionConfig(TrainConfig):
    text_dropout: float = 0.1
    """Fraction of samples trained with the null embedding (classifier-free guidance)."""
    loss: Literal["l1", "mse"] = "l1"
    bank_crops: int = 256
    """Latent crops encoded once before training (the VAE is frozen, so encoding per step is wasted work)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.text_dropout <= 1.0:
            raise ConfigError(f"{type(self).__name__}: text_dropout must be in [0, 1], got {self.text_dropout}")


@dataclass
class TrainDataConfig:
    """Where a latent-flow training reads its crops from.

    ``memory`` (today's path) loads every training CT and encodes a bank of ``bank_crops`` crops in RAM, which is
    fine for the shipped corpus and impossible at CT-RATE scale (~3.4 TiB for 27,514 volumes). ``cache``
    preprocesses the corpus once into a sharded on-disk latent cache (``training/latent_cache.py``) and streams
    crops from it with DataLoader workers, so memory does not grow with the corpus."""

    source: Literal["memory", "cache"] = "memory"
    cache_dir: str | None = None
    """Cache folder; None = ``<run>/latent_cache``. A cache built with another VAE, text encoder or
    preprocessing is refused, never reused."""
    shard_cases: int = 8
    """Cases per shard: the unit of resumption and of checksumming."""
    num_workers: int = 0
    """DataLoader worker processes reading shards (0 = in the training process)."""
    sampling: Literal["bank", "fresh"] = "bank"
    """``bank``: ``bank_crops`` crop positions drawn once with the memory path's random draws, each step picks
    from them (reproduces the memory path's loss curve when crops equal the volume); ``fresh``: new random
    crops every step (what a large corpus needs: a fixed bank would never see most volumes)."""

    def __post_init__(self) -> None:
        if self.shard_cases < 1 or self.num_workers < 0:
            raise ConfigError("train data: shard_cases must be >= 1 and num_workers >= 0")


@dataclass
class TrainControlNetConfig(TrainDiffusionConfig):
    data: TrainDataConfig = field(default_factory=TrainDataConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data.source == "cache" and self.flip_prob > 0:
            # a flipped latent is not the latent of the flipped CT, and mirrored latents are not cached
            raise ConfigError(
                "train_controlnet: data.source 'cache' does not flip in x (cached latents are not mirrored); "
                "set flip_prob 0 or use data.source 'memory'"
            )


@dataclass
class GeneratorConfig:
    """All generator sections of one preset, loaded together.

    ``preprocess`` is the one image space of the preset (``ctrag.data.transforms.PreprocessConfig``: spacing, HU
    window, orientation, grid size), shared with every other module; the VAE is trained in it and records it.
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    controlnet: ControlNetConfig = field(default_factory=ControlNetConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train_vae: TrainVAEConfig = field(default_factory=TrainVAEConfig)
    train_diffusion: TrainDiffusionConfig = field(default_factory=TrainDiffusionConfig)
    train_controlnet: TrainControlNetConfig = field(default_factory=TrainControlNetConfig)
    held_out: HeldOut = field(default_factory=HeldOut)
    """What the preset's evaluation run evaluates (from its ``evaluation`` section): no training may use it."""

    def __post_init__(self) -> None:
        if self.sampler.output_shape is None:
            self.sampler.output_shape = tuple(self.preprocess.size)  # type: ignore[assignment]
        check_compatible(self)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Generated volume size (voxels): ``sampler.output_shape``, by default the image space's size."""
        assert self.sampler.output_shape is not None
        return self.sampler.output_shape

    def to_dict(self) -> dict[str, Any]:
        return dict(config_to_dict(self))


def check_compatible(cfg: GeneratorConfig) -> None:
    """Cross-section checks: latent channels, compression factors, grid divisibility."""
    vae, unet, cn = cfg.vae, cfg.diffusion, cfg.controlnet
    if unet.in_channels != vae.latent_channels or unet.out_channels != vae.latent_channels:
        raise ConfigError(
            f"diffusion.in_channels/out_channels ({unet.in_channels}/{unet.out_channels}) must equal "
            f"vae.latent_channels ({vae.latent_channels})"
        )
    if cn.downsample != vae.downsample:
        raise ConfigError(
            f"controlnet: mask_pool x 2**(len(conditioning_embedding_num_channels)-1) = {cn.downsample} must equal "
            f"the VAE compression {vae.downsample} so mask features land on the latent grid"
        )
    factor = vae.downsample * unet.downsample
    shapes = {"sampler.output_shape": cfg.output_shape}
    for name in ("train_vae", "train_diffusion", "train_controlnet"):
        shapes[f"{name}.crop_shape"] = getattr(cfg, name).crop_shape
    for name, shape in shapes.items():
        if name == "train_vae.crop_shape":
            need = vae.downsample
        else:
            need = factor
        if any(s % need for s in shape):
            raise ConfigError(f"{name} {tuple(shape)} must be divisible by {need} on every axis")


def load_generator_config(
    source: str | Path | Mapping[str, Any] | None = "tiny-cpu", overrides: Sequence[str] = ()
) -> GeneratorConfig:
    """Load every generator section of a preset name / YAML path / mapping, with ``section.key=value`` overrides.

    ``preprocess`` is the image space, shared with the other modules. Other sections (``encoder``, ...) belong
    to other modules and are ignored here, as are overrides addressed to them; the ``evaluation`` section only
    gives ``held_out``, the cases no training of this preset may use (``ctrag.data.heldout``).
    """
    if source is None:
        raw: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        raw = dict(source)
    else:
        raw = read_yaml(resolve_config_path(source))
    mine = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] in SECTIONS]
    data = apply_overrides(_migrate_image_space({name: dict(raw.get(name) or {}) for name in SECTIONS}), mine)
    config = from_dict(GeneratorConfig, data)
    name = None if source is None or isinstance(source, Mapping) else str(source)
    config.held_out = held_out_set(raw, overrides, name=name)
    return config


def _migrate_image_space(data: dict[str, Any]) -> dict[str, Any]:
    """Configs written before the image space moved to ``preprocess`` (``pipeline.json`` of older runs) kept it
    in ``vae.image``; read it from there."""
    legacy = data.get("vae", {}).pop("image", None)
    if legacy and not data.get("preprocess"):
        data["preprocess"] = image_space_from_legacy(legacy)
    return data


def image_space_from_legacy(image: Mapping[str, Any]) -> dict[str, Any]:
    """``preprocess`` fields of an old ``vae.image`` section (spacing, hu_min/hu_max, orientation)."""
    out: dict[str, Any] = {}
    if "spacing" in image:
        out["spacing"] = list(image["spacing"])
    if "hu_min" in image or "hu_max" in image:
        out["hu_window"] = [float(image.get("hu_min", -1000.0)), float(image.get("hu_max", 1000.0))]
    if "orientation" in image:
        out["orientation"] = image["orientation"]
    return out


def image_space_record(space: PreprocessConfig) -> dict[str, Any]:
    """The image-space facts a trained VAE depends on (its grid size does not matter: it is convolutional)."""
    return {
        "spacing": [float(s) for s in space.spacing],
        "hu_window": [float(v) for v in space.hu_window],
        "output_range": [float(v) for v in space.output_range],
        "orientation": space.orientation.upper(),
    }


def latent_shape(cfg: GeneratorConfig, image_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(C, X, Y, Z) latent for an image of ``image_shape`` voxels."""
    f = cfg.vae.downsample
    if any(s % f for s in image_shape):
        raise ConfigError(f"image shape {tuple(image_shape)} is not divisible by the VAE compression {f}")
    return (cfg.vae.latent_channels, *(int(s) // f for s in image_shape))  # type: ignore[return-value]


def numel(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))
