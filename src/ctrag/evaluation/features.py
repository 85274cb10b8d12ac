"""Feature extractors for FID, kept in a registry so the backbone is a config choice, not a code change.

FID is only as meaningful as the network that embeds the images. The paper (RAG-Text2CT, sec. 3) uses a 2-D
medical backbone on axial/coronal/sagittal slices and a 3-D medical backbone on whole volumes; neither set of
weights can be downloaded here, so the registry offers, by name:

``ctnet-slice`` / ``ctnet-volume`` (default)
    The project's own CT-Net-like clinical classifier (``ctrag train classifier``): its 2-D slice trunk gives
    slice features, its 3-D reduction head gives volume features. ``weights`` = the classifier folder.
``radimagenet-resnet50``
    2-D ResNet-50 (RadImageNet layout, torchvision-style keys) from a local ``.pt``/``.pth``/``.safetensors``.
    Slices are replicated to three channels and the ImageNet channel means are subtracted in BGR order
    (the preprocessing MAISI's 2.5D FID applies to RadImageNet).
``medicalnet-resnet10|18|34|50``
    3-D ResNet (MedicalNet layout: ``module.`` prefix, ``conv_seg`` head, shortcut type per depth) from a local
    file. Volumes are z-scored, as MedicalNet was trained.
``ctrag-volume-encoder``
    3-D only: the project's trained shared-space volume tower (``ctrag train encoder``), with the preprocessing
    saved in its checkpoint; features are its L2-normalised embeddings. ``weights`` = the encoder folder.
``random-resnet2d`` / ``random-resnet3d`` (explicit fallback only)
    Small ResNets with weights drawn from a fixed seed (``torch.Generator(0)``, Kaiming normal). Random
    convolutional features still separate image distributions, but the numbers are not comparable with any
    published FID. They are never chosen implicitly: a config must name them, and their ``fingerprint`` (written
    into every table) starts with ``random-fallback``.

All extractors take images in [0, 1] (see :mod:`ctrag.evaluation.volumes`) shaped ``(N, 1, H, W)`` (2-D) or
``(N, 1, I, J, K)`` (3-D) and return ``(N, dim)`` float64 features (global average pool of the last stage).
Backbones are MONAI ``ResNet`` instances (no torchvision).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ctrag.data.nifti import Volume
from ctrag.errors import CheckpointMismatchError, ConfigError, InvalidInputError, WeightsNotFoundError
from ctrag.utils.checkpoints import load_checkpoint_file, load_strict
from ctrag.utils.hashing import sha256_file, sha256_text

if TYPE_CHECKING:  # MONAI is imported when a backbone is built
    from monai.networks.nets.resnet import ResNet

logger = logging.getLogger(__name__)

IMAGENET_MEAN_BGR: tuple[float, float, float] = (0.406, 0.456, 0.485)
RANDOM_FALLBACK_SEED = 0


class FeatureExtractor(ABC):
    """Maps a batch of images in [0, 1] to feature vectors."""

    name: str = "extractor"
    spatial_dims: int = 2

    @property
    @abstractmethod
    def dim(self) -> int:
        """Feature size."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies architecture + weights; written next to every FID so numbers are traceable."""

    @property
    def preferred_shape(self) -> tuple[int, ...] | None:
        """Input size the weights were trained at (slice ``(H, W)`` or volume ``(I, J, K)``), if known."""
        return None

    @property
    def has_own_preprocessing(self) -> bool:
        """True when :meth:`prepare` turns a HU ``Volume`` into this extractor's input itself."""
        return False

    def prepare(self, volume: Volume) -> np.ndarray:
        """This extractor's own preparation of a HU CT (only where ``has_own_preprocessing``)."""
        raise NotImplementedError(f"{self.name} uses the evaluator's preparation (ctrag.evaluation.volumes)")

    @abstractmethod
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Features for one batch already on the extractor's device."""

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __call__(self, images: torch.Tensor | np.ndarray, batch_size: int = 16) -> np.ndarray:
        x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images, dtype=torch.float32)
        expected = self.spatial_dims + 2
        if x.ndim != expected or x.shape[1] != 1:
            raise ValueError(
                f"{self.name}: expected images shaped (N, 1, {'H, W' if self.spatial_dims == 2 else 'I, J, K'}), "
                f"got {tuple(x.shape)}"
            )
        out = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], max(1, batch_size)):
                feats = self._forward(x[start : start + batch_size].to(self.device))
                out.append(feats.reshape(feats.shape[0], -1).double().cpu())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float64)
        return torch.cat(out).numpy()


class TorchFeatureExtractor(FeatureExtractor):
    """A ``nn.Module`` body plus an input normalisation; the body returns (N, dim) or (N, C, *spatial)."""

    def __init__(
        self,
        name: str,
        spatial_dims: int,
        body: nn.Module,
        dim: int,
        fingerprint: str,
        normalise: Callable[[torch.Tensor], torch.Tensor],
        device: str | torch.device = "cpu",
        preferred_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.name = name
        self.spatial_dims = spatial_dims
        self._device = torch.device(device)
        self.body = body.to(self._device).eval()
        self._dim = int(dim)
        self._fingerprint = fingerprint
        self._normalise = normalise
        self._preferred_shape = preferred_shape

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def preferred_shape(self) -> tuple[int, ...] | None:
        return self._preferred_shape

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.body(self._normalise(batch))
        if out.ndim > 2:  # global average pool of a feature map
            out = out.flatten(2).mean(dim=2)
        return out


# --------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ExtractorSpec:
    name: str
    spatial_dims: int
    needs_weights: bool
    description: str
    factory: Callable[[Path | None, str], FeatureExtractor]


_REGISTRY: dict[str, ExtractorSpec] = {}


def register_extractor(
    name: str, *, spatial_dims: int, needs_weights: bool, description: str
) -> Callable[[Callable[[Path | None, str], FeatureExtractor]], Callable[[Path | None, str], FeatureExtractor]]:
    """Decorator adding a factory ``(weights, device) -> FeatureExtractor`` under ``name``."""

    def deco(
        factory: Callable[[Path | None, str], FeatureExtractor],
    ) -> Callable[[Path | None, str], FeatureExtractor]:
        if name in _REGISTRY:
            raise ValueError(f"feature extractor {name!r} is already registered")
        _REGISTRY[name] = ExtractorSpec(name, spatial_dims, needs_weights, description, factory)
        return factory

    return deco


def list_extractors(spatial_dims: int | None = None) -> list[str]:
    return sorted(n for n, s in _REGISTRY.items() if spatial_dims is None or s.spatial_dims == spatial_dims)


def extractor_spec(name: str) -> ExtractorSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown feature extractor {name!r}; known: {list_extractors()}") from None


def create_extractor(
    name: str, weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> FeatureExtractor:
    """Build a registered extractor; ``weights`` is a local path (file or folder, depending on the extractor)."""
    spec = extractor_spec(name)
    path = Path(weights) if weights is not None else None
    if spec.needs_weights:
        if path is None:
            fallback = "random-resnet2d" if spec.spatial_dims == 2 else "random-resnet3d"
            raise WeightsNotFoundError(
                f"feature extractor {name!r} needs local weights ({spec.description}); pass a path, or name the "
                f"explicit random-feature fallback {fallback!r} (its FIDs are not comparable with published ones)"
            )
        if not path.exists():
            raise WeightsNotFoundError(f"feature extractor {name!r}: weights not found at {path}")
    elif path is not None:
        raise ConfigError(f"feature extractor {name!r} takes no weights (got {path})")
    extractor = spec.factory(path, str(device))
    if name.startswith("random-"):
        logger.warning("FID uses the random-feature fallback %r; values are not comparable with published FIDs", name)
    return extractor


# ------------------------------------------------------------------------------------------- weight loading


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` or torch file (``weights_only``); unwraps ``{"state_dict": ...}``."""
    obj: Any = load_checkpoint_file(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{path}: expected a state dict of tensors")
    return dict(obj)


def load_backbone_weights(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    strip_prefixes: tuple[str, ...] = ("module.", "backbone.", "model."),
    ignore_prefixes: tuple[str, ...] = ("fc.",),
    source: str = "weights",
) -> None:
    """Load ``state`` into ``model`` strictly after removing wrapper prefixes and classification heads.

    Every missing or unexpected key (other than ignored heads and BatchNorm ``num_batches_tracked`` counters,
    which some exports omit) is an error naming the keys: a half-loaded backbone would silently give random
    features.
    """
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key
        changed = True
        while changed:
            changed = False
            for prefix in strip_prefixes:
                if k.startswith(prefix):
                    k, changed = k[len(prefix) :], True
        if any(k.startswith(p) for p in ignore_prefixes):
            continue
        cleaned[k] = value
    load_strict(model, cleaned, source, optional=lambda k: k.endswith("num_batches_tracked"))


def _file_fingerprint(name: str, path: Path) -> str:
    return f"{name}@{sha256_file(path)[:16]}"


# -------------------------------------------------------------------------------------------- backbones


def headless_resnet(
    block: str,
    layers: Sequence[int],
    block_inplanes: Sequence[int],
    *,
    spatial_dims: int,
    in_channels: int,
    stem_kernel: int,
    shortcut_type: str = "B",
    bias_downsample: bool = False,
) -> ResNet:
    """MONAI ResNet without its classification head (``feed_forward=False``), stride-2 stem, max-pool.

    The one constructor behind every backbone here (RadImageNet, MedicalNet, the random fallbacks) and the CT-Net
    classifier's slice trunk; they differ only in these arguments.
    """
    from monai.networks.nets.resnet import ResNet

    return ResNet(
        block=block,
        layers=list(layers),
        block_inplanes=list(block_inplanes),
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=stem_kernel,
        conv1_t_stride=2,
        shortcut_type=shortcut_type,
        bias_downsample=bias_downsample,
        feed_forward=False,
    )


def resnet2d_torchvision_layout(block: str, layers: Sequence[int], block_inplanes: Sequence[int]) -> ResNet:
    """Headless 2-D ResNet in torchvision's layout (RGB input, 7×7/2 stem, max-pool, shortcut B, no bias).

    The layout RadImageNet weights were saved in, and the slice trunk of ctrag's CT-Net classifier.
    """
    return headless_resnet(block, layers, block_inplanes, spatial_dims=2, in_channels=3, stem_kernel=7)


def build_radimagenet_resnet50() -> nn.Module:
    """2-D ResNet-50 (torchvision layout: 7×7/2 stem, max-pool, bottlenecks [3, 4, 6, 3]) without its head."""
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG untouched
        return resnet2d_torchvision_layout("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512])


_MEDICALNET_LAYERS: dict[int, tuple[str, list[int]]] = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
}


def build_medicalnet_resnet(depth: int) -> nn.Module:
    """3-D ResNet in MedicalNet's layout (1 input channel, 7³/2 stem, shortcut type as MedicalNet used)."""
    from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

    if depth not in _MEDICALNET_LAYERS:
        raise ConfigError(f"MedicalNet depth must be one of {sorted(_MEDICALNET_LAYERS)}, got {depth}")
    block, layers = _MEDICALNET_LAYERS[depth]
    bias_downsample, shortcut_type = get_medicalnet_pretrained_resnet_args(depth)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG untouched
        return headless_resnet(
            block,
            layers,
            [64, 128, 256, 512],
            spatial_dims=3,
            in_channels=1,
            stem_kernel=7,
            shortcut_type=shortcut_type,
            bias_downsample=bias_downsample,
        )


def _radimagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    rgb = x.repeat(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN_BGR, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return rgb - mean


def _centre(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] → about [-2, 2] with a fixed affine map (intensity differences between images are kept)."""
    return (x - 0.5) / 0.25


def _zscore(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


@register_extractor(
    "radimagenet-resnet50",
    spatial_dims=2,
    needs_weights=True,
    description="2-D RadImageNet ResNet-50 weights file (.pt/.pth/.safetensors, torchvision-style keys)",
)
def _make_radimagenet(weights: Path | None, device: str) -> FeatureExtractor:
    assert weights is not None
    model = build_radimagenet_resnet50()
    load_backbone_weights(model, read_state_dict(weights), source=str(weights))
    return TorchFeatureExtractor(
        "radimagenet-resnet50",
        2,
        model,
        2048,
        _file_fingerprint("radimagenet-resnet50", weights),
        _radimagenet_normalise,
        device,
        preferred_shape=(224, 224),
    )


def _medicalnet_factory(depth: int) -> Callable[[Path | None, str], FeatureExtractor]:
    def make(weights: Path | None, device: str) -> FeatureExtractor:
        assert weights is not None
        model = build_medicalnet_resnet(depth)
        load_backbone_weights(
            model, read_state_dict(weights), ignore_prefixes=("conv_seg.", "fc."), source=str(weights)
        )
        dim = 2048 if depth >= 50 else 512
        name = f"medicalnet-resnet{depth}"
        return TorchFeatureExtractor(name, 3, model, dim, _file_fingerprint(name, weights), _zscore, device)

    return make


for _depth in sorted(_MEDICALNET_LAYERS):
    register_extractor(
        f"medicalnet-resnet{_depth}",
        spatial_dims=3,
        needs_weights=True,
        description=f"3-D MedicalNet ResNet-{_depth} weights file (module.-prefixed keys, conv_seg head ignored)",
    )(_medicalnet_factory(_depth))


def _random_resnet(spatial_dims: int, seed: int = RANDOM_FALLBACK_SEED) -> nn.Module:
    """Small ResNet whose every weight is drawn from ``torch.Generator().manual_seed(seed)`` (no global RNG)."""
    with torch.random.fork_rng(devices=[]):  # construction draws default inits from the global RNG
        model = headless_resnet(
            "basic", [1, 1, 1, 1], [16, 32, 64, 128], spatial_dims=spatial_dims, in_channels=1, stem_kernel=5
        )
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=gen)
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def _random_factory(spatial_dims: int) -> Callable[[Path | None, str], FeatureExtractor]:
    def make(weights: Path | None, device: str) -> FeatureExtractor:
        name = f"random-resnet{spatial_dims}d"
        fp = f"random-fallback-{name}@seed{RANDOM_FALLBACK_SEED}-{sha256_text('monai-resnet-basic-1111-16')[:8]}"
        return TorchFeatureExtractor(name, spatial_dims, _random_resnet(spatial_dims), 128, fp, _centre, device)

    return make


register_extractor(
    "random-resnet2d",
    spatial_dims=2,
    needs_weights=False,
    description="fixed-seed random 2-D ResNet: explicit fallback when no trained 2-D backbone exists",
)(_random_factory(2))
register_extractor(
    "random-resnet3d",
    spatial_dims=3,
    needs_weights=False,
    description="fixed-seed random 3-D ResNet: explicit fallback when no trained 3-D backbone exists",
)(_random_factory(3))


def _ctnet_extractor(part: str, weights: Path | None, device: str) -> FeatureExtractor:
    """The slice trunk (``part="slice"``, 2-D) or the volume features (``"volume"``, 3-D) of a classifier folder."""
    from ctrag.evaluation.classifier import ClinicalClassifier

    assert weights is not None
    clf = ClinicalClassifier.load(weights, device=device)
    shape = tuple(clf.config.input_shape)
    preferred: tuple[int, ...]
    if part == "slice":
        dims, module, dim, preferred = 2, clf.model.slice_encoder(), clf.model.slice_dim, (max(shape[0], shape[1]),) * 2
    else:
        dims, module, dim, preferred = 3, clf.model.volume_encoder(), clf.model.volume_dim, shape
    name = f"ctnet-{part}"
    return TorchFeatureExtractor(
        name, dims, module, dim, f"{name}@{clf.fingerprint[:16]}", lambda x: x, device, preferred_shape=preferred
    )


register_extractor(
    "ctnet-slice",
    spatial_dims=2,
    needs_weights=True,
    description="slice trunk of a classifier folder written by `ctrag train classifier`",
)(lambda weights, device: _ctnet_extractor("slice", weights, device))
register_extractor(
    "ctnet-volume",
    spatial_dims=3,
    needs_weights=True,
    description="volume features (penultimate layer) of a classifier folder written by `ctrag train classifier`",
)(lambda weights, device: _ctnet_extractor("volume", weights, device))


class EncoderVolumeExtractor(FeatureExtractor):
    """The project's trained shared-space volume tower (``ctrag train encoder``) as a 3-D FID backbone.

    It prepares CTs with the preprocessing stored in the encoder's checkpoint (``ctrag.encoders.preprocess``),
    so FID sees exactly what the encoder was trained on; features are its L2-normalised embeddings.
    """

    name = "ctrag-volume-encoder"
    spatial_dims = 3

    def __init__(self, encoder: Any, folder: Path, device: str | torch.device = "cpu") -> None:
        if not getattr(encoder, "supports_volume", False):
            raise InvalidInputError(f"{folder}: this encoder has no volume tower (see `ctrag train encoder`)")
        self.encoder = encoder
        self._device = torch.device(device)
        self._fingerprint = f"ctrag-volume-encoder@{str(encoder.fingerprint)[:16]}"
        size = getattr(getattr(encoder, "preprocess", None), "size", None)
        self._shape = tuple(int(s) for s in size) if size is not None else None

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def preferred_shape(self) -> tuple[int, ...] | None:
        return self._shape

    @property
    def has_own_preprocessing(self) -> bool:
        return True

    def prepare(self, volume: Volume) -> np.ndarray:
        from ctrag.encoders.preprocess import prepare_volume

        return prepare_volume(volume, self.encoder.preprocess).tensor[0].numpy()

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self._shape is not None and tuple(batch.shape[2:]) != self._shape:
            batch = torch.nn.functional.interpolate(batch, size=self._shape, mode="trilinear", align_corners=False)
        return torch.from_numpy(np.asarray(self.encoder.encode_volume(batch.cpu(), batch_size=len(batch))))


@register_extractor(
    "ctrag-volume-encoder",
    spatial_dims=3,
    needs_weights=True,
    description="trained shared-space encoder folder written by `ctrag train encoder` (volume tower)",
)
def _make_encoder_volume(weights: Path | None, device: str) -> FeatureExtractor:
    from ctrag.encoders.factory import create_encoder

    assert weights is not None
    made = create_encoder(str(weights), device=device)
    encoder = made[0] if isinstance(made, tuple) else made
    return EncoderVolumeExtractor(encoder, weights, device)
