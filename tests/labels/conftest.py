"""The label extractor fitted once per session on the 800 shipped CT-RATE train reports (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrag.labels.ct_rate import fit_on_train
from ctrag.labels.extractor import LabelExtractor

DATA = Path(__file__).parent / "data" / "ct_rate_nc_sa"


@pytest.fixture(scope="session")
def extractor(ct_rate_dir: Path) -> LabelExtractor:
    return fit_on_train(ct_rate_dir, seed=0)
