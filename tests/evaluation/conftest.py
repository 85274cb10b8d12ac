"""Fixtures for evaluation tests: the shipped real chest CTs, loaded and prepared once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from testsupport.lsa import LsaEncoder

from ctrag.data.nifti import Volume, load_volume
from ctrag.evaluation.retrieval_eval import (
    EvalData,
    RetrievalEvalConfig,
    RetrievalEvalResult,
    evaluate_retrieval,
    load_ctclip_eval_data,
)
from ctrag.evaluation.volumes import prepare_volume
from ctrag.retrieval.hybrid import HybridConfig

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


# ------------------------------------------------------------------------------------ retrieval evaluation
# Shared by test_retrieval_eval.py (the protocol) and test_retrieval_report.py (its outputs).


@pytest.fixture(scope="session")
def shipped(ct_rate_dir: Path) -> EvalData:
    return load_ctclip_eval_data(ct_rate_dir)


@pytest.fixture(scope="session")
def small(shipped: EvalData) -> EvalData:
    return EvalData(shipped.index_cases[:150], shipped.query_cases[:20], ["x"], ["a note"])


@pytest.fixture(scope="session")
def small_result(small: EvalData) -> RetrievalEvalResult:
    enc = LsaEncoder([c.report_text for c in small.index_cases])
    return evaluate_retrieval(
        small,
        enc,
        hybrid_config=HybridConfig(cv_folds=3),
        config=RetrievalEvalConfig(k=5, bootstrap=200, ablations=False),
    )
