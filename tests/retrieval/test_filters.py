"""CaseFilter -> candidate mask on a real index (CT-RATE labels, real CT + mask cases, patients)."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError
from ctrag.index import CaseIndex
from ctrag.retrieval.filters import candidate_mask
from ctrag.retrieval.types import CaseFilter


@pytest.fixture(scope="module")
def mixed_index(all_cases, all_embeddings, test_encoder) -> CaseIndex:  # type: ignore[no-untyped-def]
    """Train + val in one index: fine for search demos, refused by the leakage guard for evaluation."""
    return CaseIndex.build(
        all_embeddings, list(all_cases), encoder_fingerprint=test_encoder.fingerprint, encoder_name=test_encoder.name
    )


def _ids(index: CaseIndex, mask: np.ndarray) -> set[str]:
    return {index.case(r).case_id for r in np.flatnonzero(mask)}


def test_default_filter_is_train_split(mixed_index: CaseIndex) -> None:
    mask = candidate_mask(mixed_index, CaseFilter())
    assert {mixed_index.case(r).split for r in np.flatnonzero(mask)} == {"train"}
    assert mask.sum() == mixed_index.split_counts()["train"]
    assert candidate_mask(mixed_index, CaseFilter(splits=None)).all()
    assert _ids(mixed_index, candidate_mask(mixed_index, CaseFilter(splits=("val",)))) == {
        c.case_id for c in mixed_index.cases if c.split == "val"
    }


def test_mask_volume_and_label_filters(mixed_index: CaseIndex) -> None:
    assert _ids(mixed_index, candidate_mask(mixed_index, CaseFilter(has_mask=True))) == {
        "ts_example_sm",
        "ts_chest_crop",
    }
    no_volume = candidate_mask(mixed_index, CaseFilter(has_volume=False))
    assert (
        "ts_example_sm" not in _ids(mixed_index, no_volume)
        and no_volume.sum() == mixed_index.split_counts()["train"] - 2
    )

    eff, emph = "Pleural effusion", "Emphysema"
    col_e, col_m = CT_RATE_LABELS.index(eff), CT_RATE_LABELS.index(emph)
    both = _ids(mixed_index, candidate_mask(mixed_index, CaseFilter(labels_all=(eff, emph))))
    either = _ids(mixed_index, candidate_mask(mixed_index, CaseFilter(labels_any=(eff, emph))))
    train = [c for c in mixed_index.cases if c.split == "train" and c.labels is not None]
    assert both == {c.case_id for c in train if c.labels[col_e] and c.labels[col_m]}  # type: ignore[index]
    assert either == {c.case_id for c in train if c.labels[col_e] or c.labels[col_m]}  # type: ignore[index]
    assert len(either) > 0 and both <= either
    # Cases without labels (the CT + mask cases) never pass a label condition.
    assert "ts_example_sm" not in either


def test_exclusions(mixed_index: CaseIndex) -> None:
    flt = CaseFilter(
        exclude_case_ids=frozenset({"train_1", "not-in-index"}), exclude_patients=frozenset({"train_17294"})
    )
    ids = _ids(mixed_index, candidate_mask(mixed_index, flt))
    assert "train_1" not in ids and not {"train_175", "train_742"} & ids  # both scans of patient train_17294
    assert len(ids) == mixed_index.split_counts()["train"] - 3


def test_unknown_names_are_errors(mixed_index: CaseIndex) -> None:
    with pytest.raises(InvalidInputError, match=r"unknown label\(s\) \['Pneumonia'\]; labels are"):
        candidate_mask(mixed_index, CaseFilter(labels_all=("Pneumonia",)))
    with pytest.raises(InvalidInputError, match=r"unknown split\(s\) \['holdout'\]"):
        candidate_mask(mixed_index, CaseFilter(splits=("holdout",)))
