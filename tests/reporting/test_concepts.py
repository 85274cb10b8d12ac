"""Concept prompts: switchable, deterministic, named after the 18 CT-RATE labels."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError
from ctrag.reporting.concepts import ConceptConfig, concept_prompt


def test_concept_prompt_on_off_is_deterministic() -> None:
    p = np.zeros(18)
    p[CT_RATE_LABELS.index("Emphysema")] = 0.9
    p[CT_RATE_LABELS.index("Cardiomegaly")] = 0.35
    on = concept_prompt(p)
    assert on == concept_prompt(p.copy())
    assert "emphysema (present)" in on and "cardiomegaly (possible)" in on and on.count("(") == 2
    assert concept_prompt(p, ConceptConfig(enabled=False)) == ""
    assert concept_prompt(np.zeros(18)) == "Concepts: no abnormal finding. "
    assert concept_prompt(p, ConceptConfig(list_absent=True)).count("(absent)") == 16
    with pytest.raises(InvalidInputError):
        concept_prompt(np.zeros(5))
