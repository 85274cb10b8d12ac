"""Loaders for external FID backbones, checked with state dicts built here in the published key layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctrag.errors import CheckpointMismatchError
from ctrag.evaluation.features import (
    IMAGENET_MEAN_BGR,
    build_medicalnet_resnet,
    build_radimagenet_resnet50,
    create_extractor,
)


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter and BatchNorm statistic non-default values so a skipped key would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=gen))
                else:
                    t.copy_(0.05 * torch.randn(t.shape, generator=gen))
    return model.eval()


def test_radimagenet_loader_reads_torchvision_style_keys(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = _randomise(build_radimagenet_resnet50(), seed=1)
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["module.fc.weight"] = torch.zeros(1000, 2048)  # an ImageNet-style head that the loader must drop
    state["module.fc.bias"] = torch.zeros(1000)
    file = tmp_path / "RadImageNet-ResNet50.safetensors"
    save_file(state, str(file))

    extractor = create_extractor("radimagenet-resnet50", file)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    got = extractor(x)
    mean = torch.tensor(IMAGENET_MEAN_BGR).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = source(x.repeat(1, 3, 1, 1) - mean).double().numpy()
    assert got.shape == (2, 2048)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert extractor.fingerprint.startswith("radimagenet-resnet50@")


def test_medicalnet_loader_reads_module_prefixed_checkpoint(tmp_path: Path) -> None:
    source = _randomise(build_medicalnet_resnet(10), seed=2)
    state = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(32, 512, 3, 3, 3)  # MedicalNet's segmentation head
    file = tmp_path / "resnet_10_23dataset.pth"
    torch.save({"state_dict": state}, file)

    extractor = create_extractor("medicalnet-resnet10", file)
    x = torch.rand(1, 1, 24, 24, 16, generator=torch.Generator().manual_seed(0))
    z = (x - x.mean()) / x.std()
    with torch.no_grad():
        expected = source(z).double().numpy()
    np.testing.assert_allclose(extractor(x), expected, rtol=1e-5, atol=1e-6)


def test_loader_refuses_partial_or_misshapen_weights(tmp_path: Path) -> None:
    source = build_medicalnet_resnet(10)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    del state["module.layer3.0.conv1.weight"]
    torch.save({"state_dict": state}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match=r"1 missing \['layer3.0.conv1.weight'\]"):
        create_extractor("medicalnet-resnet10", tmp_path / "partial.pth")

    state = {k: v for k, v in source.state_dict().items()}
    state["conv1.weight"] = torch.zeros(64, 1, 3, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        create_extractor("medicalnet-resnet10", tmp_path / "shape.pth")

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a loadable"):
        create_extractor("medicalnet-resnet10", tmp_path / "junk.pth")
