"""Leakage guard: evaluation queries must never be answered from an index that contains them.

If a held-out report can retrieve itself (or another scan of the same patient, or anything from the split being
evaluated), retrieval metrics and everything generated from retrieved context are inflated. This is checked in
code, not left to convention: evaluation entry points call :func:`assert_no_leakage` before the first search.
Real data needs the patient-level check: in the shipped CT-RATE sample, two validation reports belong to
patients who also have training reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ctrag.data.case import SPLITS, Case
from ctrag.errors import InvalidInputError, LeakageError
from ctrag.index.case_index import CaseIndex

_SHOW = 5


def _preview(items: Iterable[str]) -> str:
    items = sorted(items)
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def find_leakage(
    index: CaseIndex,
    query_cases: Sequence[Case] = (),
    *,
    eval_split: str | Sequence[str] | None = None,
) -> list[str]:
    """Reasons why searching ``index`` with ``query_cases`` would leak evaluation data (empty list: safe).

    Checked: query case ids in the index; query patients in the index; the evaluated split(s) in the index.
    The evaluated splits are ``eval_split`` plus the splits of the query cases themselves, so evaluating
    validation queries against an index that holds *any* validation case is refused too.
    """
    wanted = [eval_split] if isinstance(eval_split, str) else list(eval_split or [])
    bad = [s for s in wanted if s not in SPLITS]
    if bad:
        raise InvalidInputError(f"eval_split: unknown split(s) {bad}; splits are {list(SPLITS)}")
    eval_splits = set(wanted) | {c.split for c in query_cases}
    reasons = []
    shared_ids = {c.case_id for c in query_cases if c.case_id in index}
    if shared_ids:
        reasons.append(f"{len(shared_ids)} query case(s) are in the index: {_preview(shared_ids)}")
    shared_patients = {c.patient_id for c in query_cases} & index.patient_ids
    if shared_patients:
        reasons.append(f"{len(shared_patients)} query patient(s) have cases in the index: {_preview(shared_patients)}")
    shared_splits = eval_splits & set(index.splits)
    if shared_splits:
        counts = index.split_counts()
        detail = ", ".join(f"{s} ({counts[s]} cases)" for s in SPLITS if s in shared_splits)
        reasons.append(f"the index contains the evaluated split(s): {detail}")
    return reasons


def assert_no_leakage(
    index: CaseIndex,
    query_cases: Sequence[Case] = (),
    *,
    eval_split: str | Sequence[str] | None = None,
) -> None:
    """Raise :class:`~ctrag.errors.LeakageError` if :func:`find_leakage` finds anything."""
    reasons = find_leakage(index, query_cases, eval_split=eval_split)
    if reasons:
        raise LeakageError(
            f"refusing to evaluate against index of splits {list(index.splits)} ({len(index)} cases): "
            + "; ".join(reasons)
            + ". Build the evaluation index from the train split only and keep each patient in one split."
        )
