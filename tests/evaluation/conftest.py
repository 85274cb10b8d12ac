"""Fixtures for evaluation tests: the shipped real chest CTs, loaded and prepared once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrag.data.nifti import Volume, load_volume
from ctrag.evaluation.volumes import prepare_volume

CHEST_CTS = (
    ("A0001", "ct/lowres/lung_pet_ct_dx_A0001_ct_128.nii.gz"),
    ("A0002", "ct/lowres/lung_pet_ct_dx_A0002_ct_128.nii.gz"),
    ("LIDC0314", "ct/extra/lidc_idri_0314_ct_lowres.nii.gz"),
    ("TS_SM", "ct/lowres/ts_example_ct_sm_3mm.nii.gz"),
)
EVAL_SHAPE = (48, 48, 32)


@pytest.fixture(scope="session")
def real_volumes(sample_dir: Path) -> dict[str, Volume]:
    """Real CTs (HU) keyed by a short name."""
    return {name: load_volume(sample_dir / rel) for name, rel in CHEST_CTS}


@pytest.fixture(scope="session")
def prepared_real(real_volumes: dict[str, Volume]) -> dict[str, np.ndarray]:
    """The same CTs prepared for evaluation networks (RAS, [0, 1], ``EVAL_SHAPE``)."""
    return {name: prepare_volume(v, EVAL_SHAPE) for name, v in real_volumes.items()}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Small convolutions on 2 shared cores: 2 torch threads were ~30x slower than 1 (oversubscription)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
