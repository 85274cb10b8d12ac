"""DiffVP: zero differences for target = reference, same-split normal pools, training + CLI on the shipped CTs.

The shipped CTs carry annotation-derived text (sample_data/ct/cases.csv), not their own reports; these tests check
code paths, not report quality.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from testsupport.index_data import read_ct_rate

from ctrag.data.case import Case
from ctrag.errors import LeakageError
from ctrag.reporting.diffvp import DifferenceExtractor, DiffVPConfig, local_difference
from ctrag.reporting.lm import TinyDecoderConfig
from ctrag.reporting.normal_reference import NormalReferencePool, report_is_normal
from ctrag.reporting.training.diffvp import DiffVPTrainConfig, save_diffvp, train_diffvp
from ctrag.reporting.visual import VisualConfig

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "ct"
TINY = TinyDecoderConfig(vocab_size=300, n_layer=1, n_head=2, n_embd=32, n_positions=1024)
VIS = VisualConfig(
    size=(32, 32, 16), patch_size=(16, 16, 16), geometry_size=(16, 16, 8), tower_channels=(8, 8), tower_strides=(2, 2)
)


def shipped_ct_cases() -> list[Case]:
    out = []
    with open(SAMPLE / "cases.csv", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            out.append(
                Case(
                    case_id=row["case_id"],
                    patient_id=row["patient_id"],
                    split=row["split"],
                    report_findings=row["findings"],
                    report_impression=row["impression"],
                    report_source=row["report_source"],
                    volume_path=str(SAMPLE / row["volume"]),
                    mask_path=str(SAMPLE / row["mask"]) if row["mask"] else None,
                    mask_source=row["mask_source"] or None,
                )
            )
    return out


def test_target_equal_reference_gives_zero_differences() -> None:
    torch.manual_seed(0)
    ex = DifferenceExtractor(8, 16, DiffVPConfig(queries=16, dim=32, heads=4)).eval()
    g, tex = torch.randn(8, 8), torch.randn(10, 16)
    glob, loc, _ = ex((g, tex), (g.clone(), tex.clone()))
    assert torch.allclose(glob, torch.zeros_like(glob), atol=1e-5)
    assert torch.count_nonzero(loc) == 0
    glob2, loc2, _ = ex((g, tex), (g + torch.randn_like(g), tex))
    assert glob2.abs().max() > 1e-3 and loc2.abs().max() > 0
    t, r = torch.randn(4, 3), torch.randn(4, 3)
    d = ((t - r) ** 2).sum(1)
    assert torch.allclose(local_difference(t, r), (d / d.sum())[:, None] * (t - r))


def test_pools_hold_one_split_and_pairing_stays_inside() -> None:
    train = read_ct_rate("train", 60)
    val = read_ct_rate("val", 40)
    with pytest.raises(LeakageError):
        NormalReferencePool([*train, *val], "train")
    rng = np.random.default_rng(0)
    for split, cases in (("train", train), ("val", val)):
        vecs = rng.normal(size=(len(cases), 8))
        pool = NormalReferencePool(cases, split, vectors=vecs)
        assert len(pool) > 0 and all(report_is_normal(c) and c.split == split for c in pool.cases)
        for target in cases[:10]:
            for how in ("random", "nearest"):
                i = pool.pick(target, how, rng=random.Random(1), target_vector=vecs[cases.index(target)])  # type: ignore[arg-type]
                ref = pool.cases[i]
                assert ref.split == split and ref.patient_id != target.patient_id
        other = val[0] if split == "train" else train[0]
        with pytest.raises(LeakageError):
            pool.pick(other, "random")


@pytest.mark.parametrize("pairing", ["random", "nearest"])
def test_train_and_cli_report_on_shipped_ct(pairing: str, tmp_path: Path, capsys: Any) -> None:
    from ctrag.cli import main

    shipped = shipped_ct_cases()
    pairs = [c for c in shipped if c.split == "train"]
    with pytest.raises(LeakageError):
        train_diffvp(shipped, (), DiffVPTrainConfig(steps=1, text_steps=0, lm=TINY, visual=VIS))
    cfg = DiffVPTrainConfig(
        steps=2, text_steps=2, lm=TINY, visual=VIS, model=DiffVPConfig(pairing=pairing, max_new_tokens=10)
    )
    model, refs, summary = train_diffvp(pairs, read_ct_rate("train", 6), cfg)
    assert summary["normal_references"] and set(summary["pairs"].values()) == {"annotation-derived"}
    assert all(summary["reference_of"][t] != t for t in summary["reference_of"])
    save_diffvp(model, refs, summary, tmp_path / "m")
    ct = next(c for c in shipped if c.split == "test").volume_path  # a held-out CT
    args = ["report", str(ct), "--method", "diffvp", "--lm", str(tmp_path / "m"), "--pairing", pairing, "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "diffvp" and out["reference"]["case_id"] in summary["normal_references"]
    assert out["anchor"].strip().startswith("Concepts:") and len(out["anchor_probabilities"]) == 18
    assert main(args[:-1]) == 0  # without --json: the report, then the normal reference it was compared with
    text = capsys.readouterr().out
    assert not text.lstrip().startswith("{") and out["report"] in text
    assert f"Normal reference: {out['reference']['case_id']} (train pool, {pairing} pairing)" in text
