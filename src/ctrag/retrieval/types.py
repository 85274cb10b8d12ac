"""Value types shared by index, retrieval strategies, generation and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctrag.data.case import Case


@dataclass(frozen=True)
class Hit:
    """One retrieved case with its score (higher = more similar) and rank (0 = first)."""

    case: Case
    score: float
    rank: int
    strategy: str = "nearest"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        return self.case.case_id


@dataclass(frozen=True)
class CaseFilter:
    """Restricts candidates before a strategy picks among them.

    ``labels_all``/``labels_any`` name CT-RATE labels (see ``ctrag.data.labels.CT_RATE_LABELS``) that candidates
    must carry; ``exclude_patients`` drops every case of those patients (used to keep a query's own patient out).
    """

    splits: tuple[str, ...] | None = ("train",)
    has_mask: bool | None = None
    has_volume: bool | None = None
    labels_all: tuple[str, ...] = ()
    labels_any: tuple[str, ...] = ()
    exclude_case_ids: frozenset[str] = frozenset()
    exclude_patients: frozenset[str] = frozenset()
