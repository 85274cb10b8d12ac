"""Generation fixtures live in ``testsupport.generation_data`` (registered by the root conftest, so tests/cli shares
the one session-trained run); the names below stay importable as ``tests.generation.conftest`` for the tests."""

from __future__ import annotations

import pytest
from testsupport.generation_data import (  # noqa: F401  re-exported for the generation tests
    SAMPLE,
    TEST_OVERRIDES,
    TINY_UNET,
    _threads,
    tiny_config,
)


@pytest.fixture(scope="session")
def result(pipeline, val_reports):  # type: ignore[no-untyped-def]
    """One nearest-proxy generation of a real validation report (seed 3), shared by test_pipeline and test_output."""
    return pipeline(val_reports[0], strategy="nearest", seed=3)
