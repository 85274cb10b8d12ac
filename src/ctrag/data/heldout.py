"""The held-out set of a preset: every case its evaluation run evaluates, which no training may see.

An evaluation run (``ctrag evaluate generation``, section ``evaluation`` of a preset) evaluates the cases of
``split`` (or ``case_ids``) and the report-only cases of ``report_split`` (or ``report_case_ids``); the tiny
preset evaluates ``test`` CTs and ``val`` reports. A generator or classifier trained on any of them would be
scored on what it learned from. This module states that set once, read from the same ``evaluation`` keys the
evaluation config (``ctrag.evaluation.generation_config.GenerationEvalConfig``) has, so the trainings of a preset refuse
exactly what its evaluation uses. ``test`` is always held out, whatever the section says.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ctrag.errors import LeakageError

ALWAYS_HELD_OUT: tuple[str, ...] = ("test",)
_SHOW = 8


class _HasSplit(Protocol):
    @property
    def case_id(self) -> str: ...

    @property
    def split(self) -> str: ...


@dataclass(frozen=True)
class HeldOut:
    """Splits and case ids an evaluation run evaluates; ``source`` says which config they were read from."""

    splits: tuple[str, ...] = ALWAYS_HELD_OUT
    case_ids: tuple[str, ...] = ()
    source: str = "default (the test split)"

    @classmethod
    def from_evaluation(cls, section: Mapping[str, Any] | None, source: str = "evaluation section") -> HeldOut:
        """Read the evaluated splits and case ids from an ``evaluation`` preset section (None: test only)."""
        data = dict(section or {})
        split = data.get("split", "test")
        report_split = data.get("report_split")
        splits = [*ALWAYS_HELD_OUT, str(split)] + ([str(report_split)] if report_split else [])
        ids = [str(c) for c in (data.get("case_ids") or ())] + [str(c) for c in (data.get("report_case_ids") or ())]
        return cls(splits=tuple(dict.fromkeys(splits)), case_ids=tuple(dict.fromkeys(ids)), source=source)

    def describe(self) -> str:
        ids = f" and case(s) {_preview(self.case_ids)}" if self.case_ids else ""
        return f"split(s) {list(self.splits)}{ids} ({self.source})"

    def offending(self, cases: Iterable[_HasSplit]) -> list[str]:
        """Ids of the cases an evaluation run evaluates: of a held-out split, or named by the evaluation."""
        ids = set(self.case_ids)
        return [c.case_id for c in cases if c.split in self.splits or c.case_id in ids]

    def check_splits(self, splits: Sequence[str], what: str) -> None:
        """Refuse to train ``what`` on a split the evaluation uses."""
        shared = [s for s in splits if s in self.splits]
        if shared:
            raise LeakageError(
                f"refusing to train {what} on split(s) {shared}, held out for evaluation: the evaluation run "
                f"evaluates {self.describe()}; train on cases it never sees (e.g. the train split)"
            )

    def check_cases(self, cases: Iterable[_HasSplit], what: str) -> None:
        """Refuse to train ``what`` on any case the evaluation evaluates, naming them."""
        bad = self.offending(cases)
        if bad:
            raise LeakageError(
                f"refusing to train {what} on {len(bad)} case(s) held out for evaluation, {_preview(bad)}: the "
                f"evaluation run evaluates {self.describe()}"
            )

    def check_case_ids(self, case_ids: Iterable[str], what: str) -> None:
        """Like ``check_cases`` for cases whose split is no longer known (preloaded training data)."""
        bad = [c for c in case_ids if c in set(self.case_ids)]
        if bad:
            raise LeakageError(
                f"refusing to train {what} on case(s) held out for evaluation, {_preview(bad)}: the evaluation "
                f"run evaluates {self.describe()}"
            )


def held_out_set(
    config: str | os.PathLike[str] | Mapping[str, Any] | None, overrides: Sequence[str] = (), *, name: str | None = None
) -> HeldOut:
    """The held-out set of a preset name / YAML path / mapping: what its ``evaluation`` section evaluates.

    ``overrides`` are ``--set`` items; those addressed to ``evaluation.`` apply (others are ignored).
    """
    from ctrag.config import apply_overrides, read_yaml, resolve_config_path

    if config is None:
        raw: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        raw = dict(config)
    else:
        raw = read_yaml(resolve_config_path(str(config)))
    label = name or ("the given config" if config is None or isinstance(config, Mapping) else str(config))
    mine = [o for o in overrides if o.split("=", 1)[0].startswith("evaluation.")]
    section = apply_overrides({"evaluation": dict(raw.get("evaluation") or {})}, mine)["evaluation"]
    return HeldOut.from_evaluation(section, source=f"evaluation section of {label}")


def _preview(items: Iterable[str]) -> str:
    items = list(items)
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more
