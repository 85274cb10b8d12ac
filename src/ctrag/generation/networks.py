"""Build MONAI's generative networks (core or MAISI variants) from the typed configs.

Nothing here re-implements a layer: the VAE is ``AutoencoderKL`` / ``AutoencoderKlMaisi``, the denoiser is
``DiffusionModelUNet`` / ``DiffusionModelUNetMaisi`` and the control branch is ``ControlNet`` /
``ControlNetMaisi``. The MAISI classes are the ones the public MAISI, Text2CT and RAG-Text2CT checkpoints were
saved from, so arch ``maisi`` with the matching channel settings can load those weights.

``unet_forward`` and ``controlnet_forward`` hide the one difference callers must not care about: MAISI networks
take extra inputs (spacing, modality class) that the core ones do not.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from ctrag.errors import ConfigError
from ctrag.generation.config import ControlNetConfig, DiffusionConfig, VAEConfig

logger = logging.getLogger(__name__)


def build_vae(cfg: VAEConfig) -> nn.Module:
    common: dict[str, Any] = dict(
        spatial_dims=3,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        num_res_blocks=tuple(cfg.num_res_blocks),
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        norm_eps=cfg.norm_eps,
        attention_levels=tuple(cfg.attention_levels),
        with_encoder_nonlocal_attn=cfg.with_encoder_nonlocal_attn,
        with_decoder_nonlocal_attn=cfg.with_decoder_nonlocal_attn,
    )
    if cfg.arch == "maisi":
        from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

        return AutoencoderKlMaisi(
            num_channels=tuple(cfg.channels),
            use_checkpointing=cfg.use_checkpointing,
            use_convtranspose=cfg.use_convtranspose,
            norm_float16=cfg.norm_float16,
            num_splits=cfg.num_splits,
            dim_split=cfg.dim_split,
            **common,
        )
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(channels=tuple(cfg.channels), **common)


def _flash_attention(cfg: DiffusionConfig) -> bool:
    """MONAI refuses flash attention without CUDA; it has no weights, so the CPU build uses plain attention."""
    if cfg.use_flash_attention and not torch.cuda.is_available():
        logger.info("use_flash_attention requested but CUDA is unavailable: building with standard attention")
        return False
    return cfg.use_flash_attention


def _unet_common(cfg: DiffusionConfig) -> dict[str, Any]:
    return dict(
        spatial_dims=3,
        in_channels=cfg.in_channels,
        num_res_blocks=tuple(cfg.num_res_blocks),
        attention_levels=tuple(cfg.attention_levels),
        norm_num_groups=cfg.norm_num_groups,
        norm_eps=cfg.norm_eps,
        resblock_updown=cfg.resblock_updown,
        num_head_channels=tuple(cfg.num_head_channels),
        with_conditioning=cfg.with_conditioning,
        transformer_num_layers=cfg.transformer_num_layers,
        cross_attention_dim=cfg.cross_attention_dim,
        num_class_embeds=cfg.num_class_embeds,
        upcast_attention=cfg.upcast_attention,
        include_fc=cfg.include_fc,
        use_combined_linear=cfg.use_combined_linear,
        use_flash_attention=_flash_attention(cfg),
    )


def build_unet(cfg: DiffusionConfig) -> nn.Module:
    common = _unet_common(cfg)
    if cfg.include_top_region_index_input or cfg.include_bottom_region_index_input:
        raise ConfigError(
            "diffusion: body-region index inputs (MAISI v1) are not supported by ctrag's sampler; "
            "use a checkpoint trained without them (Text2CT, MAISI rflow)"
        )
    if cfg.arch == "maisi":
        from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

        return DiffusionModelUNetMaisi(
            out_channels=cfg.out_channels,
            num_channels=tuple(cfg.channels),
            include_top_region_index_input=cfg.include_top_region_index_input,
            include_bottom_region_index_input=cfg.include_bottom_region_index_input,
            include_spacing_input=cfg.include_spacing_input,
            **common,
        )
    if cfg.include_spacing_input:
        raise ConfigError("diffusion: include_spacing_input exists only for arch 'maisi'")
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(out_channels=cfg.out_channels, channels=tuple(cfg.channels), **common)


def mask_channels(cn: ControlNetConfig, num_labels: int) -> int:
    """Input channels of the mask encoder: one per label plus background, or the bits of a label id."""
    return cn.binary_bits if cn.mask_encoding == "binary" else num_labels + 1


def build_controlnet(unet_cfg: DiffusionConfig, cn: ControlNetConfig, num_labels: int) -> nn.Module:
    """An (untrained) ControlNet whose encoder mirrors ``unet_cfg``; copy the UNet weights with
    ``ctrag.generation.controlnet.controlnet_from_unet``."""
    common = _unet_common(unet_cfg)
    mask_args: dict[str, Any] = dict(
        conditioning_embedding_in_channels=mask_channels(cn, num_labels),
        conditioning_embedding_num_channels=tuple(cn.conditioning_embedding_num_channels),
    )
    if unet_cfg.arch == "maisi":
        from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi

        return ControlNetMaisi(
            num_channels=tuple(unet_cfg.channels), use_checkpointing=cn.use_checkpointing, **common, **mask_args
        )
    from monai.networks.nets import ControlNet

    return ControlNet(channels=tuple(unet_cfg.channels), **common, **mask_args)


def extra_unet_inputs(
    cfg: DiffusionConfig, batch: int, spacing: Sequence[float] | None, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Keyword inputs MAISI-style UNets need besides x/t/context (empty for the core UNet)."""
    extra: dict[str, torch.Tensor] = {}
    if cfg.num_class_embeds is not None:
        extra["class_labels"] = torch.full((batch,), cfg.class_label, dtype=torch.long, device=device)
    if cfg.include_spacing_input:
        if spacing is None:
            raise ValueError("this UNet takes the output spacing as input; pass spacing=")
        # MAISI feeds spacing in units of 0.01 mm (e.g. 0.75 mm -> 75).
        extra["spacing_tensor"] = torch.tensor([[float(s) * 100.0 for s in spacing]] * batch, device=device)
    return extra


def controlnet_extra_inputs(extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The subset of ``extra_unet_inputs`` the ControlNet accepts (it has a class embedding, no spacing)."""
    return {k: v for k, v in extra.items() if k == "class_labels"}


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build networks with weights drawn from ``seed`` without touching the caller's RNG state.

    MONAI constructors initialise from torch's global generator; forking it makes a run's initial weights a
    function of its config seed (needed for reproducible and resumable training) and leaves global state as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def to_channels_last(module: nn.Module) -> nn.Module:
    """channels-last (NDHWC) weights: faster 3-D convolutions on CPUs and tensor cores alike."""
    return module.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]


CHECKPOINT_BLOCKS: tuple[str, ...] = ("down_blocks", "middle_block", "up_blocks", "encoder.blocks", "decoder.blocks")
"""Where MONAI's UNets / ControlNets (``down_blocks``, ``middle_block``, ``up_blocks``) and VAEs (``encoder.blocks``,
``decoder.blocks``) keep the blocks whose activations dominate training memory."""


def enable_grad_checkpointing(module: nn.Module, blocks: Sequence[str] = CHECKPOINT_BLOCKS) -> int:
    """Make every block of ``module`` found under ``blocks`` recompute its activations in the backward pass.

    Each block's ``forward`` is wrapped in ``torch.utils.checkpoint`` (non-reentrant, so keyword arguments,
    frozen weights and autocast work), only while gradients are being recorded; the module's parameters and
    ``state_dict`` keys stay as they were, so checkpoints and published weights are unaffected. A frozen UNet
    (ControlNet training) benefits too: gradients still flow through its up blocks. Returns the number of blocks.
    """
    count = 0
    for path in blocks:
        target: Any = module
        for part in path.split("."):
            target = getattr(target, part, None)
            if target is None:
                break
        if target is None:
            continue
        for block in target if isinstance(target, nn.ModuleList) else [target]:
            count += _checkpoint_block(block)
    if count == 0:
        raise ConfigError(f"grad_checkpointing: {type(module).__name__} has none of the blocks {list(blocks)}")
    return count


def _checkpoint_block(block: nn.Module) -> int:
    if not isinstance(block.__dict__.get("forward"), functools.partial):
        # a partial over the block (not a closure) so that deep copies of the network wrap their own block
        setattr(block, "forward", functools.partial(_checkpointed_forward, block))  # noqa: B010
    return 1


def _checkpointed_forward(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = functools.partial(type(block).forward, block)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
