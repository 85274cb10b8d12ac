"""Shared fixtures: paths to the shipped real sample data, offline settings, and a seeded RNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from testsupport.generation_data import (  # noqa: F401  shared by tests/generation and tests/cli, built once
    gen_corpus,
    gen_index,
    pipeline,
    text_encoder,
    trained_run,
    training_cases,
    val_reports,
)
from testsupport.index_data import (  # noqa: F401  fixtures shared by tests/index, tests/retrieval, tests/cli
    all_cases,
    all_embeddings,
    support_module,
    test_encoder,
    train_index,
)
from testsupport.segment_data import (  # noqa: F401  shared by tests/segment and tests/cli, built once
    classical,
    cts,
    measure,
    ts_masks,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def ct_rate_dir() -> Path:
    return SAMPLE / "ct_rate_nc_sa" / "ct_clip_text_classifier"


@pytest.fixture(scope="session")
def lowres_chest_ct() -> Path:
    """Real chest CT (Lung-PET-CT-Dx A0002, 128x128x30, LPS)."""
    return SAMPLE / "ct" / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz"


@pytest.fixture(scope="session")
def ts_ct_and_mask() -> tuple[Path, Path]:
    """Real CT with its real same-grid TotalSegmentator mask (122x101x30, RAS)."""
    low = SAMPLE / "ct" / "lowres"
    return low / "ts_example_ct_sm_3mm.nii.gz", low / "ts_example_ct_sm_3mm_seg_total.nii.gz"


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
