"""``GenerationPipeline``: report -> retrieved anatomy proxy -> ControlNet-guided latent flow -> CT volume.

The pipeline is a set of components (text encoder, retriever, VAE, UNet, ControlNet, sampler) and one way to
run them, ``__call__``. Its body is a sequence of numbered steps, each a small method:

1. ``check_inputs``   refuse empty reports, unknown strategies, bad masks before any work;
2. ``encode_prompt``  report embedding (cross-attention context) and the null embedding for guidance;
3. ``retrieve``       nearest / random / farthest training case *with a mask* (RAG-Text2CT Sec. 2.0.3);
4. ``prepare_proxy``  its mask (or the user's) converted to the ControlNet label set and resampled with nearest
                      neighbour onto the output grid (RAS, configured spacing, centred on the proxy's lungs);
5. ``prepare_latents`` seeded noise from a ``torch.Generator`` (never the global RNG);
6. ``denoise``        the rectified-flow loop (batched CFG, cached mask features) under a progress bar;
7. ``decode``         VAE decode (sliding window for large volumes), [0, 1] -> HU.

It returns a ``GenerationResult`` holding the volume, its affine, the proxy mask and everything needed to
reproduce it. Training lives in ``ctrag.generation.train`` and is never imported here.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ctrag._version import __version__
from ctrag.data.nifti import Volume, load_volume
from ctrag.errors import CheckpointMismatchError, ConfigError, InvalidInputError, LeakageError, WeightsNotFoundError
from ctrag.generation.config import GeneratorConfig, load_generator_config
from ctrag.generation.controlnet import ControlInputs, controlnet_residuals, encode_control
from ctrag.generation.data import segment_ct
from ctrag.generation.decode import decode_latents
from ctrag.generation.imagespace import grid_affine, labels_to_grid, unit_to_hu, world_bounds
from ctrag.generation.masks import check_labels, convert_labels, encode_mask, label_names, num_labels, source_space
from ctrag.generation.networks import controlnet_extra_inputs, extra_unet_inputs, to_channels_last
from ctrag.generation.pipeline_io import (
    CONTROLNET_DIR,
    PIPELINE_FILE,
    SAMPLER_DIR,
    UNET_DIR,
    VAE_DIR,
    component_folder,
    load_controlnet_component,
    load_unet_component,
    load_vae_component,
    read_pipeline_index,
    update_pipeline_index,
)
from ctrag.generation.sampler import GuidanceInputs, RectifiedFlowSampler, sample_latents
from ctrag.generation.weights import component_hash, save_component
from ctrag.utils.hashing import sha256_text

logger = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("nearest", "random", "farthest", "none")
ProgressFn = Callable[[int, int], None]


@dataclass
class ProxyMask:
    """The structural proxy on the output grid, and where it came from."""

    labels: np.ndarray
    affine: np.ndarray
    source: str
    """"retrieval", "user" or "none"."""
    origin: str = ""
    """File (and vocabulary) the labels were read from."""


@dataclass
class GenerationResult:
    """A generated CT and its provenance. ``volume`` is in Hounsfield units on the grid given by ``affine``."""

    volume: np.ndarray
    affine: np.ndarray
    mask: np.ndarray | None
    mask_source: str
    label_set: str
    report_sha256: str
    strategy: str
    retrieved: list[dict[str, Any]]
    seed: int
    steps: int
    cfg: float
    control_scale: float
    config: dict[str, Any]
    weights: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    mask_origin: str = ""
    device: str = "cpu"

    @property
    def spacing(self) -> tuple[float, float, float]:
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))

    def to_volume(self) -> Volume:
        return Volume(array=self.volume, affine=self.affine.copy(), meta={"generated": True})

    def mask_volume(self) -> Volume | None:
        return None if self.mask is None else Volume(array=self.mask, affine=self.affine.copy())

    def provenance(self) -> dict[str, Any]:
        """JSON-ready record of how this volume was made (no report text, only its hash)."""
        return {
            "ctrag_version": __version__,
            "report_sha256": self.report_sha256,
            "strategy": self.strategy,
            "retrieved": self.retrieved,
            "mask_source": self.mask_source,
            "mask_origin": self.mask_origin,
            "label_set": self.label_set,
            "seed": self.seed,
            "steps": self.steps,
            "cfg": self.cfg,
            "control_scale": self.control_scale,
            "shape": list(self.volume.shape),
            "spacing_mm": list(self.spacing),
            "affine": self.affine.tolist(),
            "hu_range": [float(self.volume.min()), float(self.volume.max())],
            "weights_sha256": self.weights,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "device": self.device,
            "config": self.config,
        }


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
        self._progress_config: dict[str, Any] = {}
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
            encoder = create_text_encoder(record, device or config.sampler.device)
        pipe = cls._load(run_dir, index, config, encoder, retriever, index_dir, device, require_controlnet)
        pipe.encoder_spec = dict(index.get("encoder") or {})
        return pipe

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
        pipe = cls._load(weights, index, gen_cfg, encoder, retriever, index_dir, device, False)
        pipe.encoder_spec = dict(index.get("encoder") or {})
        return pipe

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
        folders = {n: component_folder(run_dir, index, n) for n in (VAE_DIR, UNET_DIR, CONTROLNET_DIR, SAMPLER_DIR)}
        for needed in (VAE_DIR, UNET_DIR):
            if folders[needed] is None:
                command = "vae" if needed == VAE_DIR else "diffusion"
                raise WeightsNotFoundError(f"{run_dir} has no trained {needed} (run `ctrag train {command}`)")
        if require_controlnet and folders[CONTROLNET_DIR] is None:
            raise WeightsNotFoundError(f"{run_dir} has no trained controlnet (run `ctrag train controlnet`)")
        vae_dir, unet_dir = folders[VAE_DIR], folders[UNET_DIR]
        assert vae_dir is not None and unet_dir is not None
        vae, _ = load_vae_component(vae_dir, config, dev)
        unet, null, scale_factor, _ = load_unet_component(unet_dir, config, dev)
        weights = {VAE_DIR: component_hash(vae_dir), UNET_DIR: component_hash(unet_dir)}
        controlnet = None
        cn_dir = folders[CONTROLNET_DIR]
        if cn_dir is not None:
            controlnet, _ = load_controlnet_component(cn_dir, config, dev)
            weights[CONTROLNET_DIR] = component_hash(cn_dir)
        sampler_dir = folders[SAMPLER_DIR]
        sampler = (
            RectifiedFlowSampler.from_pretrained(sampler_dir)
            if sampler_dir is not None
            else RectifiedFlowSampler.from_config(config.sampler.scheduler)
        )
        if retriever is None and index_dir is not None:
            retriever = load_retriever(index_dir, encoder, str(dev))
        return cls(
            config=config,
            vae=vae,
            unet=unet,
            sampler=sampler,
            scale_factor=scale_factor,
            null_embedding=null,
            controlnet=controlnet,
            encoder=encoder,
            retriever=retriever,
            weights=weights,
            device=dev,
        )

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write every component folder and ``pipeline.json``; ``from_pretrained`` reads it back."""
        from ctrag.config import config_to_dict
        from ctrag.generation.pipeline_io import unet_meta

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        save_component(root / VAE_DIR, "vae", self.vae, config_to_dict(cfg.vae))
        extra = (
            {"null_embedding": self.null_embedding.detach().cpu()}
            if cfg.diffusion.null_embedding == "learned"
            else None
        )
        save_component(
            root / UNET_DIR,
            "unet",
            self.unet,
            config_to_dict(cfg.diffusion),
            unet_meta(self.scale_factor, cfg, None),
            extra,
        )
        if self.controlnet is not None:
            meta = {
                "label_set": cfg.controlnet.label_set,
                "num_labels": num_labels(cfg.controlnet.label_set),
                "unet": config_to_dict(cfg.diffusion),
            }
            save_component(root / CONTROLNET_DIR, "controlnet", self.controlnet, config_to_dict(cfg.controlnet), meta)
        elif (root / CONTROLNET_DIR).exists():
            shutil.rmtree(root / CONTROLNET_DIR)
        self.sampler.save_config(root / SAMPLER_DIR)
        record = None
        if self.encoder is not None:
            from ctrag.generation.pipeline_io import encoder_record

            spec = {k: v for k, v in self.encoder_spec.items() if k in ("name_or_path", "weights")}
            record = encoder_record(self.encoder, spec)
        update_pipeline_index(root, cfg, encoder=record)
        return root / PIPELINE_FILE

    # ------------------------------------------------------------------ progress
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self._progress_config = dict(kwargs)

    def progress_bar(self, total: int) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, **{"desc": "sampling", "leave": False, **self._progress_config})

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
        progress: bool | ProgressFn | None = None,
    ) -> GenerationResult:
        """Generate one CT for ``report``.

        ``mask`` (a NIfTI path or ``Volume``) replaces retrieval as the spatial control; ``strategy="none"``
        with no mask is the text-only baseline. ``mask_labels`` names the mask's vocabulary ("coarse",
        "totalseg") or "auto" (ids above the coarse range mean TotalSegmentator). ``grid`` is the output affine
        to use when no proxy places the volume (e.g. a text-only baseline on a guided result's grid).
        """
        smp = self.config.sampler
        steps = smp.steps if steps is None else int(steps)
        cfg = smp.cfg if cfg is None else float(cfg)
        control_scale = smp.control_scale if control_scale is None else float(control_scale)
        shape = tuple(output_shape or smp.output_shape)
        timings: dict[str, float] = {}
        t_all = time.perf_counter()

        # 1. check inputs
        mask_volume = self.check_inputs(report, strategy, mask, mask_labels, seed, steps, cfg, control_scale, shape)

        # 2. encode prompt
        t0 = time.perf_counter()
        context = self.encode_prompt(report)
        timings["encode"] = time.perf_counter() - t0

        # 3. retrieve a structural proxy (unless the user gave one or asked for none)
        t0 = time.perf_counter()
        hits: list[dict[str, Any]] = []
        proxy: ProxyMask | None = None
        if mask_volume is not None:
            proxy = self.prepare_proxy(mask_volume, mask_labels, shape, source="user")
        elif strategy != "none":
            hit = self.retrieve(report, strategy, seed)
            hits = [hit["record"]]
            timings["retrieve"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            # 4. proxy mask on the output grid
            proxy = self.prepare_proxy(hit["mask"], hit["vocabulary"], shape, source="retrieval", body=hit["body"])
        timings["proxy"] = time.perf_counter() - t0
        if proxy is not None:
            affine = proxy.affine
        elif grid is not None:
            affine = np.asarray(grid, dtype=np.float64)
            spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
            if affine.shape != (4, 4) or not np.allclose(spacing, self.config.vae.image.spacing, atol=1e-3):
                raise InvalidInputError(f"grid must be a 4x4 affine with spacing {self.config.vae.image.spacing}")
        else:
            affine = self.default_affine(shape)

        # 5. seeded latents
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = self.prepare_latents(shape, generator, latents)

        # 6. denoising loop
        t0 = time.perf_counter()
        control = self.prepare_control(proxy) if proxy is not None and self.controlnet is not None else None
        inputs = GuidanceInputs(
            context=context,
            null_context=None if context is None else self.null_embedding.expand_as(context),
            unet_extra=extra_unet_inputs(self.config.diffusion, 1, self.config.vae.image.spacing, self.device),
            control=control,
        )
        callback, bar = self._progress(progress, steps)
        try:
            z = sample_latents(
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
                callback=callback,
            )
        finally:
            if bar is not None:
                bar.close()
        timings["denoise"] = time.perf_counter() - t0

        # 7. decode
        t0 = time.perf_counter()
        volume = self.decode(z)
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all
        return GenerationResult(
            volume=volume,
            affine=affine,
            mask=None if proxy is None else proxy.labels,
            mask_source="none" if proxy is None else proxy.source,
            mask_origin="" if proxy is None else proxy.origin,
            label_set=self.config.controlnet.label_set,
            report_sha256=sha256_text(report),
            strategy="user-mask" if mask_volume is not None else strategy,
            retrieved=hits,
            seed=int(seed),
            steps=steps,
            cfg=cfg,
            control_scale=control_scale if control is not None else 0.0,
            config=self.config.to_dict(),
            weights=dict(self.weights),
            timings=timings,
            device=str(self.device),
        )

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
        if not isinstance(report, str) or not report.strip():
            raise InvalidInputError("report is empty; give the radiology report text to generate from")
        if strategy not in STRATEGIES:
            raise InvalidInputError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
        if mask_labels not in ("auto", "coarse", "totalseg"):
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
            volume = mask if isinstance(mask, Volume) else load_volume(mask)
            if np.asarray(volume.array).ndim != 3:
                raise InvalidInputError(f"mask {volume.path or ''} must be 3-D, got shape {volume.array.shape}")
            vocabulary = self._vocabulary(volume, mask_labels)
            check_labels(volume.array, vocabulary, name=volume.path or "mask")
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

    def retrieve(self, report: str, strategy: str, seed: int) -> dict[str, Any]:
        """Top-1 training case that can give a proxy (a mask, or a CT to segment) under ``strategy``.

        Returns its label volume in its own vocabulary, a body mask when its CT is available, and a record for
        the provenance file.
        """
        from ctrag.retrieval.types import CaseFilter

        if self.retriever is None:
            raise InvalidInputError("this pipeline has no retriever; pass index_dir= or retriever=")
        proxy_from = self.config.sampler.proxy_from
        usable = (lambda c: c.has_mask) if proxy_from == "case" else (lambda c: c.has_mask or c.has_volume)
        excluded = frozenset(c.case_id for c in self.retriever.index.cases if not usable(c))
        hits = self.retriever.search(
            report, k=1, strategy=strategy, filters=CaseFilter(splits=("train",), exclude_case_ids=excluded), seed=seed
        )
        if not hits:
            raise InvalidInputError("retrieval found no training case with a mask or a CT in the index")
        hit = hits[0]
        case = hit.case
        if case.split != "train":
            raise LeakageError(
                f"retrieved case {case.case_id} is from split {case.split!r}; proxies come from train only"
            )
        ct = load_volume(case.volume_path) if case.volume_path is not None else None
        use_mask = case.mask_path is not None and (proxy_from != "segment-or-case" or ct is None)
        body = None
        if use_mask:
            assert case.mask_path is not None
            mask = load_volume(case.mask_path)
            vocabulary = source_space(case.mask_source, [int(v) for v in np.unique(mask.array)])
            origin = f"case mask ({case.mask_source})"
            if vocabulary != self.config.controlnet.label_set and ct is not None:
                body = segment_ct(ct).array > 0
        else:
            assert ct is not None
            mask = segment_ct(ct)
            vocabulary, origin = "coarse", "ctrag.segment (classical) of the retrieved CT"
        record = {
            "case_id": case.case_id,
            "score": float(hit.score),
            "rank": int(hit.rank),
            "strategy": strategy,
            "proxy": origin,
            "report_source": case.report_source,
        }
        return {"mask": mask, "vocabulary": vocabulary, "record": record, "body": body}

    def _vocabulary(self, volume: Volume, mask_labels: str) -> str:
        if mask_labels != "auto":
            return mask_labels
        return source_space(None, [int(v) for v in np.unique(np.asarray(volume.array)) if v == v])

    def default_affine(self, shape: tuple[int, ...]) -> np.ndarray:
        """Grid centred on the world origin when there is no proxy to place it on."""
        img = self.config.vae.image
        return grid_affine(np.zeros(3), shape, img.spacing, img.orientation)

    def prepare_proxy(
        self,
        mask: Volume,
        vocabulary: str,
        shape: tuple[int, ...],
        *,
        source: str,
        body: np.ndarray | None = None,
    ) -> ProxyMask:
        """Resample a mask (nearest neighbour) onto the output grid, then convert it to the ControlNet label set.

        The grid is centred on the mask's lungs (``sampler.proxy_center``); resampling before converting keeps
        the work proportional to the output size even for a 512x512x128 TotalSegmentator mask.
        """
        vocab = self._vocabulary(mask, vocabulary) if vocabulary == "auto" else vocabulary
        name = mask.path or "mask"
        img = self.config.vae.image
        center = self._proxy_center(np.asarray(mask.array), mask.affine, vocab)
        affine = grid_affine(center, shape, img.spacing, img.orientation)
        on_grid = labels_to_grid(mask, shape, affine)
        body_grid = None
        if body is not None:
            body_grid = labels_to_grid(Volume(array=body.astype(np.uint8), affine=mask.affine), shape, affine) > 0
        labels = convert_labels(on_grid, vocab, self.config.controlnet.label_set, body=body_grid, name=name)
        return ProxyMask(labels=labels, affine=affine, source=source, origin=f"{mask.path or 'array'} ({vocab})")

    def _proxy_center(self, labels: np.ndarray, affine: np.ndarray, vocabulary: str) -> np.ndarray:
        """World position of the centre of the lungs' (or all labels') bounding box, per ``proxy_center``."""
        mode = self.config.sampler.proxy_center
        sel: np.ndarray | None = None
        if mode == "lungs":
            lung_ids = [k for k, v in label_names(vocabulary).items() if v.startswith("lung")]
            sel = np.isin(labels, lung_ids)
            if not sel.any():
                sel = labels > 0
        elif mode == "foreground":
            sel = labels > 0
        if sel is None or not sel.any():
            lo, hi = world_bounds(labels.shape, affine)
            return (lo + hi) / 2.0
        center_vox = np.zeros(3)
        for axis in range(3):
            present = np.flatnonzero(sel.any(axis=tuple(a for a in range(3) if a != axis)))
            center_vox[axis] = (present[0] + present[-1]) / 2.0
        return affine[:3, :3] @ center_vox + affine[:3, 3]

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
        spacing = self.config.vae.image.spacing
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
        return unit_to_hu(unit, self.config.vae.image)

    def _progress(self, progress: bool | ProgressFn | None, steps: int) -> tuple[ProgressFn | None, Any]:
        if progress is None or progress is False:
            return None, None
        if callable(progress) and not isinstance(progress, bool):
            return progress, None
        bar = self.progress_bar(steps)
        return (lambda done, total: bar.update(1)), bar


def _autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ---------------------------------------------------------------------------------------------- factories


def encoder_spec_from_config(
    config: str | os.PathLike[str] | Mapping[str, Any], overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """``{"name_or_path", "weights", "long_text"}`` of the text encoder a preset's ``encoder`` section names.

    The section is read through its schema (``ctrag.encoders.config.EncoderConfig``: ``text``, ``text_weights``,
    ``long_text``), so a preset that names another encoder gets that encoder and not the MiniLM default.
    ``overrides`` are ``--set`` items; those addressed to ``encoder.`` apply here.
    """
    from ctrag.config import load_config
    from ctrag.encoders.config import EncoderConfig

    mine = [o.split(".", 1)[1] for o in overrides if o.split("=", 1)[0].startswith("encoder.")]
    source = dict(config) if isinstance(config, Mapping) else str(config)
    section = load_config(EncoderConfig, source, mine, section="encoder")
    return {"name_or_path": section.text, "weights": section.text_weights, "long_text": section.long_text}


def create_text_encoder(spec: Mapping[str, Any], device: str) -> Any:
    """Build the encoder a spec names (``ctrag.encoders.create_encoder``; local files only)."""
    from ctrag.encoders.factory import create_encoder

    # only a non-default long-text mode is passed on: every encoder type defaults to truncation
    settings = {"long_text": spec["long_text"]} if spec.get("long_text", "truncate") != "truncate" else {}
    made = create_encoder(str(spec["name_or_path"]), weights=spec.get("weights"), device=device, **settings)
    encoder = made[0] if isinstance(made, tuple) else made
    expected = spec.get("fingerprint")
    if expected and encoder.fingerprint != expected:
        raise CheckpointMismatchError(
            f"text encoder {spec['name_or_path']!r} now has fingerprint {encoder.fingerprint}, but the UNet was "
            f"trained with {expected}; its embeddings would not mean what the UNet learned"
        )
    return encoder


def load_retriever(index_dir: str | os.PathLike[str], encoder: Any | None, device: str) -> Any:
    """Retriever over ``index_dir``; shares ``encoder`` when the index was built with the same one."""
    from ctrag.retrieval.retriever import Retriever

    retriever = Retriever.from_dir(index_dir, device=device)
    if encoder is not None and getattr(encoder, "fingerprint", None) == retriever.index.encoder_fingerprint:
        retriever = Retriever(
            retriever.index, encoder, retriever.scorer, config=retriever.config, scorer_name=retriever.scorer_name
        )
    return retriever
