"""``GenerationPipeline``: report -> retrieved anatomy proxy -> ControlNet-guided latent flow -> CT volume.

The pipeline is a set of components (text encoder, retriever, VAE, UNet, ControlNet, sampler) and one way to
run them, ``__call__``. Its body is a sequence of numbered steps, each handing off to a small method:

1. ``check_inputs``    refuse empty reports, unknown strategies, bad masks before any work;
2. ``encode_prompt``   report embedding (cross-attention context); the null embedding serves guidance;
3. ``prepare_proxy``   retrieve a training case with anatomy and put its mask (or the user's) on the output grid
                       (``ctrag.generation.proxy``);
4. ``prepare_latents`` seeded noise from a ``torch.Generator`` (never the global RNG);
5. ``denoise``         mask features encoded once, then the rectified-flow loop (batched CFG), reporting progress;
6. ``decode``          VAE decode (sliding window for large volumes), [0, 1] -> HU.

``generate_batch`` runs the same steps for many reports: 1-3 and the noise per report (each from its own seed), 5
once over the stacked latents (one UNet/ControlNet pass per step for the whole batch, both CFG halves included), 6
one volume at a time.

It returns a ``GenerationResult`` holding the volume, its affine, the proxy mask and everything needed to
reproduce it. Run folders are read and written by ``ctrag.generation.run_folder``; training lives in
``ctrag.generation.training`` and is never imported here.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ctrag.data import transforms
from ctrag.data.labels import num_labels
from ctrag.data.nifti import Volume
from ctrag.data.report_text import check_report_text
from ctrag.encoders.cache import MemoTextEncoder, memo_encoder
from ctrag.errors import CheckpointMismatchError, ConfigError, CtragError, InvalidInputError, WeightsNotFoundError
from ctrag.generation.config import GeneratorConfig, load_generator_config
from ctrag.generation.controlnet import ControlInputs, controlnet_residuals, encode_control, encode_mask
from ctrag.generation.decode import decode_latents
from ctrag.generation.networks import controlnet_extra_inputs, extra_unet_inputs, to_channels_last
from ctrag.generation.output import GenerationResult
from ctrag.generation.proxy import (
    MASK_VOCABULARIES,
    ProxyMask,
    default_grid,
    load_retriever,
    load_user_mask,
    place_on_grid,
    retrieve_proxy,
)
from ctrag.generation.run_folder import (
    CONTROLNET_DIR,
    PIPELINE_FILE,
    SAMPLER_DIR,
    create_text_encoder,
    encoder_record,
    encoder_spec_from_config,
    load_run_components,
    read_pipeline_index,
    recorded_encoder_spec,
    save_controlnet,
    save_unet,
    save_vae,
    update_pipeline_index,
    vae_meta,
)
from ctrag.generation.sampler import SAMPLING_STAGE, GuidanceInputs, RectifiedFlowSampler, sample_latents
from ctrag.utils.hashing import sha256_text
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("nearest", "random", "farthest", "none")
PROMPT_MEMO_ITEMS = 256
"""Distinct reports whose embeddings a loaded pipeline keeps (a long-lived service sees many)."""

__all__ = ["STRATEGIES", "GenerationPipeline", "GenerationResult", "ProxyMask"]


class GenerationPipeline:
    """Text- and anatomy-conditioned CT generation from registered components (see module docstring)."""

    def __init__(
        self,
        *,
        config: GeneratorConfig,
        vae: nn.Module,
        unet: nn.Module,
        sampler: RectifiedFlowSampler,
        scale_factor: float,
        null_embedding: torch.Tensor | None = None,
        controlnet: nn.Module | None = None,
        encoder: Any | None = None,
        encoder_spec: Mapping[str, Any] | None = None,
        retriever: Any | None = None,
        weights: Mapping[str, str] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device or config.sampler.device)
        self.vae = vae.to(self.device).eval()
        self.unet = unet.to(self.device).eval()
        self.controlnet = None if controlnet is None else controlnet.to(self.device).eval()
        self.sampler = sampler
        self.scale_factor = float(scale_factor)
        dim = config.diffusion.cross_attention_dim or 1
        null = torch.zeros(1, 1, dim) if null_embedding is None else null_embedding.reshape(1, 1, -1)
        self.null_embedding = null.to(self.device)
        self.encoder = encoder
        self.encoder_spec = dict(encoder_spec or {})
        self.retriever = retriever
        self.weights = dict(weights or {})
        if config.diffusion.with_conditioning and encoder is not None and getattr(encoder, "dim", dim) != dim:
            raise ConfigError(
                f"text encoder dimension {encoder.dim} differs from the UNet's cross_attention_dim {dim}; "
                "use the encoder the UNet was trained with"
            )
        if config.sampler.channels_last:
            for m in (self.unet, self.controlnet):
                if m is not None:
                    to_channels_last(m)
        self._unet_fn: nn.Module = self.unet
        self._residual_fn: Any = controlnet_residuals
        if config.sampler.compile:
            self._unet_fn = torch.compile(self.unet)  # type: ignore[assignment]
            self._residual_fn = torch.compile(controlnet_residuals)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        run_dir: str | os.PathLike[str],
        *,
        overrides: Sequence[str] = (),
        encoder: Any | None = None,
        retriever: Any | None = None,
        index_dir: str | os.PathLike[str] | None = None,
        device: str | None = None,
        require_controlnet: bool = False,
    ) -> GenerationPipeline:
        """Load a run folder written by ``ctrag train`` or ``save_pretrained`` (its ``pipeline.json``)."""
        index = read_pipeline_index(run_dir)
        config = load_generator_config(index["config"], overrides)
        if encoder is None and config.diffusion.with_conditioning:
            record = index.get("encoder")
            if not record:
                raise WeightsNotFoundError(
                    f"{run_dir}/{PIPELINE_FILE} does not record the text encoder the UNet was trained with; "
                    "pass encoder="
                )
            encoder = create_text_encoder(recorded_encoder_spec(record, overrides), device or config.sampler.device)
        return cls._load(run_dir, index, config, encoder, retriever, index_dir, device, require_controlnet)

    @classmethod
    def from_config(
        cls,
        config: str | os.PathLike[str] | Mapping[str, Any] = "tiny-cpu",
        weights: str | os.PathLike[str] | None = None,
        *,
        overrides: Sequence[str] = (),
        index_dir: str | os.PathLike[str] | None = None,
        encoder: Any | None = None,
        retriever: Any | None = None,
        device: str | None = None,
    ) -> GenerationPipeline:
        """Build from a preset/YAML and load ``weights`` (a run folder); every component must match the config."""
        if weights is None:
            raise WeightsNotFoundError(
                "no generator weights given: pass weights=RUN_DIR (see `ctrag train`) - ctrag never downloads models"
            )
        gen_cfg = load_generator_config(config if not isinstance(config, os.PathLike) else str(config), overrides)
        index = read_pipeline_index(weights)
        if encoder is None and gen_cfg.diffusion.with_conditioning:
            source = config if not isinstance(config, os.PathLike) else str(config)
            spec = encoder_spec_from_config(source, overrides)
            recorded = index.get("encoder") or {}
            if recorded.get("fingerprint"):
                spec["fingerprint"] = recorded["fingerprint"]
            encoder = create_text_encoder(spec, device or gen_cfg.sampler.device)
        return cls._load(weights, index, gen_cfg, encoder, retriever, index_dir, device, False)

    @classmethod
    def _load(
        cls,
        run_dir: str | os.PathLike[str],
        index: dict[str, Any],
        config: GeneratorConfig,
        encoder: Any | None,
        retriever: Any | None,
        index_dir: str | os.PathLike[str] | None,
        device: str | None,
        require_controlnet: bool,
    ) -> GenerationPipeline:
        dev = torch.device(device or config.sampler.device)
        recorded = (index.get("encoder") or {}).get("fingerprint")
        given = getattr(encoder, "fingerprint", None)
        if recorded and given and recorded != given:
            raise CheckpointMismatchError(
                f"the UNet in {run_dir} was trained with text encoder {recorded}, but encoder {given} was given"
            )
        parts = load_run_components(run_dir, index, config, dev, require_controlnet=require_controlnet)
        if encoder is not None and not isinstance(encoder, MemoTextEncoder):
            # Prompt encoding and the retriever's query share one memo: a report is encoded once however often
            # it is generated from (seeds, baselines, ablation methods).
            encoder = memo_encoder(encoder, max_items=PROMPT_MEMO_ITEMS)
        if retriever is None and index_dir is not None:
            retriever = load_retriever(index_dir, encoder, str(dev))
        return cls(
            config=config,
            vae=parts.vae,
            unet=parts.unet,
            sampler=parts.sampler,
            scale_factor=parts.scale_factor,
            null_embedding=parts.null_embedding,
            controlnet=parts.controlnet,
            encoder=encoder,
            encoder_spec=index.get("encoder") or {},
            retriever=retriever,
            weights=parts.weights,
            device=dev,
        )

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write every component folder and ``pipeline.json``; ``from_pretrained`` reads it back."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        save_vae(root, cfg, self.vae, vae_meta(cfg, None))
        save_unet(root, cfg, self.unet, self.scale_factor, self.null_embedding)
        if self.controlnet is not None:
            save_controlnet(root, cfg, self.controlnet)
        elif (root / CONTROLNET_DIR).exists():
            shutil.rmtree(root / CONTROLNET_DIR)
        self.sampler.save_config(root / SAMPLER_DIR)
        record = None
        if self.encoder is not None:
            spec = {k: v for k, v in self.encoder_spec.items() if k in ("name_or_path", "weights", "long_text")}
            record = encoder_record(self.encoder, spec)
        update_pipeline_index(root, cfg, encoder=record)
        return root / PIPELINE_FILE

    # ------------------------------------------------------------------ call
    @torch.inference_mode()
    def __call__(
        self,
        report: str,
        *,
        strategy: str = "nearest",
        mask: str | os.PathLike[str] | Volume | None = None,
        mask_labels: str = "auto",
        seed: int = 0,
        steps: int | None = None,
        cfg: float | None = None,
        control_scale: float | None = None,
        output_shape: tuple[int, int, int] | None = None,
        grid: np.ndarray | None = None,
        latents: torch.Tensor | None = None,
        progress: ProgressFn | None = None,
    ) -> GenerationResult:
        """Generate one CT for ``report``.

        ``mask`` (a NIfTI path or ``Volume``) replaces retrieval as the spatial control; ``strategy="none"``
        with no mask is the text-only baseline. ``mask_labels`` names the mask's vocabulary ("coarse",
        "totalseg") or "auto" (ids above the coarse range mean TotalSegmentator). ``grid`` is the output affine
        to use when no proxy places the volume (e.g. a text-only baseline on a guided result's grid).
        ``progress`` receives ``("sampling", step, steps)`` as the loop advances.
        """
        smp = self.config.sampler
        steps = smp.steps if steps is None else int(steps)
        cfg = smp.cfg if cfg is None else float(cfg)
        control_scale = smp.control_scale if control_scale is None else float(control_scale)
        shape = tuple(output_shape or self.config.output_shape)
        timings: dict[str, float] = {}
        t_all = time.perf_counter()

        # 1. check inputs
        mask_volume = self.check_inputs(report, strategy, mask, mask_labels, seed, steps, cfg, control_scale, shape)

        # 2. encode the prompt
        t0 = time.perf_counter()
        context = self.encode_prompt(report)
        timings["encode"] = time.perf_counter() - t0

        # 3. structural proxy on the output grid: the user's mask, a retrieved case's, or none
        proxy, hits = self.prepare_proxy(report, strategy, mask_volume, mask_labels, seed, shape, timings)
        affine = self.output_grid(proxy, grid, shape)

        # 4. seeded latents
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = self.prepare_latents(shape, generator, latents)

        # 5. denoising loop
        t0 = time.perf_counter()
        control = self.prepare_control(proxy) if proxy is not None and self.controlnet is not None else None
        z = self.denoise(noise, context, control, steps, cfg, control_scale, progress)
        timings["denoise"] = time.perf_counter() - t0

        # 6. decode
        t0 = time.perf_counter()
        volume = self.decode(z)
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all
        return self._result(
            volume,
            affine,
            proxy,
            report,
            "user-mask" if mask_volume is not None else strategy,
            hits,
            seed,
            (steps, cfg, control_scale if control is not None else 0.0),
            timings,
        )

    def _result(
        self,
        volume: np.ndarray,
        affine: np.ndarray,
        proxy: Any,
        report: str,
        strategy: str,
        hits: Any,
        seed: int,
        sampling: tuple[int, float, float],
        timings: dict[str, float],
    ) -> GenerationResult:
        """One generated CT with what made it (shared by single and batched generation)."""
        steps, cfg, control_scale = sampling
        return GenerationResult(
            volume=volume,
            affine=affine,
            mask=None if proxy is None else proxy.labels,
            mask_source="none" if proxy is None else proxy.source,
            mask_origin="" if proxy is None else proxy.origin,
            label_set=self.config.controlnet.label_set,
            report_sha256=sha256_text(report),
            strategy=strategy,
            retrieved=hits,
            seed=int(seed),
            steps=steps,
            cfg=cfg,
            control_scale=control_scale,
            config=self.config.to_dict(),
            weights=dict(self.weights),
            timings=timings,
            device=str(self.device),
        )

    @torch.inference_mode()
    def generate_batch(
        self,
        reports: Sequence[str],
        seeds: Sequence[int],
        *,
        strategy: str = "nearest",
        steps: int | None = None,
        cfg: float | None = None,
        control_scale: float | None = None,
        output_shape: tuple[int, int, int] | None = None,
        progress: ProgressFn | None = None,
    ) -> list[GenerationResult | CtragError]:
        """Generate one CT per report, the reports' latents sampled together as one batch.

        Each report keeps its own seed (its noise and random retrieval are drawn from it alone), its own
        retrieved proxy and its own provenance, so a report's CT does not depend on which reports share its
        batch (up to float rounding of batched kernels). Reports are validated, encoded and given their proxy
        one by one; one that fails there comes back as its ``CtragError`` in its place and the rest of the
        batch goes on. Latents are decoded one volume at a time, so decoder memory does not grow with the batch.
        """
        if len(reports) != len(seeds):
            raise InvalidInputError(f"{len(reports)} reports but {len(seeds)} seeds; give one seed per report")
        if not reports:
            return []
        smp = self.config.sampler
        steps = smp.steps if steps is None else int(steps)
        cfg = smp.cfg if cfg is None else float(cfg)
        control_scale = smp.control_scale if control_scale is None else float(control_scale)
        shape = tuple(output_shape or self.config.output_shape)
        t_all = time.perf_counter()
        out: list[GenerationResult | CtragError | None] = [None] * len(reports)
        ready: list[tuple[int, torch.Tensor | None, ProxyMask | None, list[dict[str, Any]], dict[str, float]]] = []
        noises: list[torch.Tensor] = []
        for i, (report, seed) in enumerate(zip(reports, seeds, strict=True)):
            timings: dict[str, float] = {}
            try:
                self.check_inputs(report, strategy, None, "auto", seed, steps, cfg, control_scale, shape)
                t0 = time.perf_counter()
                context = self.encode_prompt(report)
                timings["encode"] = time.perf_counter() - t0
                proxy, hits = self.prepare_proxy(report, strategy, None, "auto", seed, shape, timings)
            except CtragError as exc:
                out[i] = exc
                continue
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            noises.append(self.prepare_latents(shape, generator))
            ready.append((i, context, proxy, hits, timings))
        if ready:
            t0 = time.perf_counter()
            use_control = self.controlnet is not None and ready[0][2] is not None
            control = None
            if use_control:
                parts = [self.prepare_control(proxy) for _, _, proxy, _, _ in ready if proxy is not None]
                labels = [p.class_labels for p in parts]
                control = ControlInputs(
                    torch.cat([p.features for p in parts], dim=0),
                    None if labels[0] is None else torch.cat([lab for lab in labels if lab is not None], dim=0),
                )
            contexts = [c for _, c, _, _, _ in ready]
            context = None if contexts[0] is None else torch.cat([c for c in contexts if c is not None], dim=0)
            z = self.denoise(torch.cat(noises, dim=0), context, control, steps, cfg, control_scale, progress)
            denoise_s = time.perf_counter() - t0
            for row, (i, _, proxy, hits, timings) in enumerate(ready):
                timings["denoise_batch"] = denoise_s
                t0 = time.perf_counter()
                volume = self.decode(z[row : row + 1])
                timings["decode"] = time.perf_counter() - t0
                timings["total_batch"] = time.perf_counter() - t_all
                out[i] = self._result(
                    volume,
                    self.output_grid(proxy, None, shape),
                    proxy,
                    reports[i],
                    strategy,
                    hits,
                    seeds[i],
                    (steps, cfg, control_scale if control is not None else 0.0),
                    timings,
                )
        return [r for r in out if r is not None]

    # ------------------------------------------------------------------ steps
    def check_inputs(
        self,
        report: str,
        strategy: str,
        mask: str | os.PathLike[str] | Volume | None,
        mask_labels: str,
        seed: int,
        steps: int,
        cfg: float,
        control_scale: float,
        shape: tuple[int, ...],
    ) -> Volume | None:
        """Validate every argument before any tensor is allocated; returns the loaded mask, if any."""
        check_report_text(report, what="report")
        if strategy not in STRATEGIES:
            raise InvalidInputError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
        if mask_labels not in MASK_VOCABULARIES:
            raise InvalidInputError(f"mask_labels must be 'auto', 'coarse' or 'totalseg', got {mask_labels!r}")
        if not isinstance(seed, int) or seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
        if steps < 1 or steps > self.sampler.num_train_timesteps:
            raise InvalidInputError(f"steps must be in 1..{self.sampler.num_train_timesteps}, got {steps}")
        if cfg < 0:
            raise InvalidInputError(f"cfg (guidance scale) must be >= 0, got {cfg}")
        if control_scale < 0:
            raise InvalidInputError(f"control_scale must be >= 0, got {control_scale}")
        factor = self.config.vae.downsample * self.config.diffusion.downsample
        if len(shape) != 3 or any(int(s) % factor or int(s) <= 0 for s in shape):
            raise InvalidInputError(f"output shape {tuple(shape)} must be 3 positive sizes divisible by {factor}")
        volume: Volume | None = None
        if mask is not None:
            volume = load_user_mask(mask, mask_labels)
            if self.controlnet is None:
                raise WeightsNotFoundError("a mask was given but these weights have no ControlNet to use it")
        elif strategy != "none" and self.retriever is None:
            raise InvalidInputError(
                f"strategy {strategy!r} needs a retrieval index (--index DIR); use strategy 'none' for text only"
            )
        return volume

    def encode_prompt(self, report: str) -> torch.Tensor | None:
        """(1, 1, D) report embedding, or None when the UNet takes no text."""
        if not self.config.diffusion.with_conditioning:
            return None
        if self.encoder is None:
            raise InvalidInputError("this pipeline has no text encoder; construct it with encoder=...")
        vec = np.asarray(self.encoder.encode_text([report]), dtype=np.float32)
        return torch.from_numpy(vec).reshape(1, 1, -1).to(self.device)

    def prepare_proxy(
        self,
        report: str,
        strategy: str,
        mask: Volume | None,
        mask_labels: str,
        seed: int,
        shape: tuple[int, ...],
        timings: dict[str, float],
    ) -> tuple[ProxyMask | None, list[dict[str, Any]]]:
        """The proxy on the output grid and the retrieval records: from ``mask``, else retrieved (unless the
        strategy is ``none``)."""
        space, smp, label_set = self.config.preprocess, self.config.sampler, self.config.controlnet.label_set
        t0 = time.perf_counter()
        proxy: ProxyMask | None = None
        hits: list[dict[str, Any]] = []
        if mask is not None:
            proxy = place_on_grid(mask, mask_labels, shape, space, label_set, center=smp.proxy_center, source="user")
        elif strategy != "none":
            hit = retrieve_proxy(self.retriever, report, strategy, seed, proxy_from=smp.proxy_from, label_set=label_set)
            hits = [hit.record]
            timings["retrieve"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            proxy = place_on_grid(
                hit.mask, hit.vocabulary, shape, space, label_set, center=smp.proxy_center, source="retrieval",
                body=hit.body,
            )  # fmt: skip
        timings["proxy"] = time.perf_counter() - t0
        return proxy, hits

    def output_grid(self, proxy: ProxyMask | None, grid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        """The affine of the generated volume: the proxy's grid, the caller's, or one centred on the origin."""
        space = self.config.preprocess
        if proxy is not None:
            return proxy.affine
        if grid is None:
            return default_grid(shape, space)
        affine = np.asarray(grid, dtype=np.float64)
        spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
        if affine.shape != (4, 4) or not np.allclose(spacing, space.spacing, atol=1e-3):
            raise InvalidInputError(f"grid must be a 4x4 affine with spacing {space.spacing}")
        return affine

    def prepare_control(self, proxy: ProxyMask) -> ControlInputs:
        """Encode the proxy once (one-hot/binary, pooled, strided convs) for every step of the loop."""
        assert self.controlnet is not None
        cn = self.config.controlnet
        lab = torch.from_numpy(proxy.labels.astype(np.int64))[None, None].to(self.device)
        mask_input = encode_mask(
            lab, num_labels(cn.label_set), cn.mask_encoding, pool=cn.mask_pool, bits=cn.binary_bits
        )
        if self.config.sampler.channels_last:
            mask_input = mask_input.contiguous(memory_format=torch.channels_last_3d)
        spacing = self.config.preprocess.spacing
        extra = controlnet_extra_inputs(extra_unet_inputs(self.config.diffusion, 1, spacing, self.device))
        with torch.autocast(
            self.device.type,
            dtype=_autocast_dtype(self.config.sampler.precision) or torch.float32,
            enabled=self.config.sampler.precision != "fp32",
        ):
            return encode_control(self.controlnet, mask_input, extra.get("class_labels"))

    def prepare_latents(
        self, shape: tuple[int, ...], generator: torch.Generator, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Initial noise (1, C, x, y, z) drawn on the CPU from ``generator`` (identical on every device)."""
        f = self.config.vae.downsample
        lshape = (1, self.config.vae.latent_channels, *(int(s) // f for s in shape))
        if latents is not None:
            if tuple(latents.shape) != lshape:
                raise InvalidInputError(f"latents must have shape {lshape}, got {tuple(latents.shape)}")
            noise = latents.float()
        else:
            noise = torch.randn(lshape, generator=generator, dtype=torch.float32)
        noise = noise.to(self.device)
        if self.config.sampler.channels_last:
            noise = noise.contiguous(memory_format=torch.channels_last_3d)
        return noise

    def denoise(
        self,
        noise: torch.Tensor,
        context: torch.Tensor | None,
        control: ControlInputs | None,
        steps: int,
        cfg: float,
        control_scale: float,
        progress: ProgressFn | None,
    ) -> torch.Tensor:
        """The guided rectified-flow loop from ``noise`` to a clean latent."""
        smp = self.config.sampler
        inputs = GuidanceInputs(
            context=context,
            null_context=None if context is None else self.null_embedding.expand_as(context),
            unet_extra=extra_unet_inputs(
                self.config.diffusion, noise.shape[0], self.config.preprocess.spacing, self.device
            ),
            control=control,
        )
        if progress is not None:
            progress(SAMPLING_STAGE, 0, steps)
        return sample_latents(
            self._unet_fn,
            self.sampler,
            noise,
            inputs,
            steps=steps,
            cfg=cfg,
            controlnet=self.controlnet if control is not None else None,
            residual_fn=self._residual_fn,
            control_scale=control_scale,
            control_window=(smp.control_start, smp.control_end),
            autocast_dtype=_autocast_dtype(smp.precision),
            progress=progress,
        )

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> HU volume (X, Y, Z) float32."""
        smp = self.config.sampler
        dtype = _autocast_dtype(smp.precision)
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            image = decode_latents(
                self.vae,
                latents.contiguous(),
                self.scale_factor,
                downsample=self.config.vae.downsample,
                roi=smp.sw_roi,
                overlap=smp.sw_overlap,
                sw_batch_size=smp.sw_batch_size,
                mode=smp.sw_mode,
            )
        unit = image.float()[0, 0].cpu().numpy()
        space = self.config.preprocess
        return np.asarray(transforms.unit_to_hu(unit, space.hu_window, space.output_range), dtype=np.float32)


def _autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
