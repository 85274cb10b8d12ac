"""Turn a :class:`~ctrag.retrieval.types.CaseFilter` into a boolean candidate mask over index rows.

Filters run *before* a strategy chooses, so "the nearest case with a mask" means exactly that, not "the nearest
case, dropped if it has no mask". The work is vectorised over :attr:`CaseIndex.arrays` so it stays cheap at
10^6 cases.
"""

from __future__ import annotations

import numpy as np

from ctrag.data.case import SPLITS
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError
from ctrag.index.case_index import CaseIndex
from ctrag.retrieval.types import CaseFilter


def _label_columns(names: tuple[str, ...], field: str) -> list[int]:
    unknown = [n for n in names if n not in CT_RATE_LABELS]
    if unknown:
        raise InvalidInputError(f"CaseFilter.{field}: unknown label(s) {unknown}; labels are {list(CT_RATE_LABELS)}")
    return [CT_RATE_LABELS.index(n) for n in names]


def validate_filter(flt: CaseFilter) -> None:
    """Raise :class:`InvalidInputError` for split or label names that do not exist."""
    if flt.splits is not None:
        bad = [s for s in flt.splits if s not in SPLITS]
        if bad:
            raise InvalidInputError(f"CaseFilter.splits: unknown split(s) {bad}; splits are {list(SPLITS)}")
    _label_columns(tuple(flt.labels_all), "labels_all")
    _label_columns(tuple(flt.labels_any), "labels_any")


def candidate_mask(index: CaseIndex, flt: CaseFilter) -> np.ndarray:
    """(count,) bool: rows of ``index`` that pass every condition of ``flt``.

    Cases without labels never pass a label condition (unknown is not "present").
    """
    validate_filter(flt)
    arr = index.arrays
    mask = np.ones(len(index), dtype=bool)
    if flt.splits is not None:
        mask &= np.isin(arr.split, [SPLITS.index(s) for s in flt.splits])
    if flt.has_mask is not None:
        mask &= arr.has_mask == flt.has_mask
    if flt.has_volume is not None:
        mask &= arr.has_volume == flt.has_volume
    if flt.labels_all:
        cols = _label_columns(tuple(flt.labels_all), "labels_all")
        mask &= (arr.labels[:, cols] == 1).all(axis=1)
    if flt.labels_any:
        cols = _label_columns(tuple(flt.labels_any), "labels_any")
        mask &= (arr.labels[:, cols] == 1).any(axis=1)
    if flt.exclude_case_ids:
        for cid in flt.exclude_case_ids:
            if cid in index:
                mask[index.row_of(cid)] = False
    if flt.exclude_patients:
        codes = [arr.patient_codes[p] for p in flt.exclude_patients if p in arr.patient_codes]
        if codes:
            mask &= ~np.isin(arr.patient, codes)
    return mask
