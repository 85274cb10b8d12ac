"""Normal-reference pools for DiffVP (issue 13 item 5): cases whose reports state no abnormality, one split each.

Why one split per pool: DiffVP conditions on the difference between a scan and a normal reference; a reference
drawn from another split would leak (a test scan seen as a training reference, or the reverse). A pool therefore
holds cases of exactly one split, and :meth:`NormalReferencePool.pick` refuses a target from another split
(``LeakageError``). The target's own case and patient are never its reference.

Pairing: ``random`` (the paper: a reference drawn uniformly from the pool) or ``nearest`` (our extension: the
most similar normal case by cosine similarity of given vectors, e.g. the index embeddings or the visual global
vectors — the reference that differs least in anatomy, so the difference should be mostly the pathology).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from ctrag.data.case import Case
from ctrag.errors import InvalidInputError, LeakageError
from ctrag.reporting.sentences import tag_report

Pairing = Literal["random", "nearest"]


def report_is_normal(case: Case) -> bool:
    """No abnormality: all 18 labels 0 when the case has labels, else no sentence flagged abnormal."""
    if case.labels is not None:
        return not any(case.labels)
    if not case.has_report:
        return False
    return not any(s.abnormal for s in tag_report(case.report_findings, case.report_impression))


class NormalReferencePool:
    def __init__(
        self,
        cases: Sequence[Case],
        split: str,
        *,
        vectors: np.ndarray | None = None,
        is_normal: Callable[[Case], bool] = report_is_normal,
    ) -> None:
        other = sorted({c.split for c in cases} - {split})
        if other:
            raise LeakageError(f"a normal-reference pool holds one split ({split}); got cases of {other}")
        keep = [i for i, c in enumerate(cases) if is_normal(c)]
        if not keep:
            raise InvalidInputError(f"no normal case (no abnormality stated) among {len(cases)} {split} case(s)")
        self.split = split
        self.cases = [cases[i] for i in keep]
        self.vectors: np.ndarray | None = None
        if vectors is not None:
            v = np.asarray(vectors, dtype=np.float32)
            if v.shape[0] != len(cases):
                raise InvalidInputError(f"{v.shape[0]} vectors for {len(cases)} cases")
            v = v[keep]
            self.vectors = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def __len__(self) -> int:
        return len(self.cases)

    def pick(
        self,
        target: Case,
        pairing: Pairing = "random",
        *,
        rng: random.Random | None = None,
        target_vector: np.ndarray | None = None,
    ) -> int:
        """Index (into :attr:`cases`) of the reference for ``target``."""
        if target.split != self.split:
            raise LeakageError(f"target {target.case_id} is {target.split}; this reference pool is {self.split}")
        allowed = [
            i for i, c in enumerate(self.cases) if c.case_id != target.case_id and c.patient_id != target.patient_id
        ]
        if not allowed:
            raise InvalidInputError(f"no normal reference other than the target's own case/patient ({target.case_id})")
        if pairing == "random":
            return (rng or random.Random(0)).choice(allowed)
        if pairing != "nearest":
            raise InvalidInputError(f"unknown pairing {pairing!r}; use random or nearest")
        if self.vectors is None or target_vector is None:
            raise InvalidInputError("nearest pairing needs pool vectors and the target's vector")
        q = np.asarray(target_vector, dtype=np.float32).reshape(-1)
        scores = self.vectors[allowed] @ (q / max(float(np.linalg.norm(q)), 1e-12))
        return allowed[int(np.argmax(scores))]
