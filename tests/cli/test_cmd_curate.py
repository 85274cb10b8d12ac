"""``ctrag curate`` on the shipped CT-RATE train reports: the written subset covers every label, bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

from ctrag.cli import main
from ctrag.labels.ct_rate import read_split


def test_curate_writes_a_label_covering_subset(ct_rate_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "subset.json"
    assert main(["curate", str(ct_rate_dir), "--fraction", "0.05", "--out", str(out), "--seed", "2"]) == 0
    record = json.loads(out.read_text())
    train = read_split(ct_rate_dir, "train")
    rows = [train.case_ids.index(c) for c in record["case_ids"]]
    assert len(rows) == record["n_selected"] == max(record["budget"], record["coverage_rows"])
    assert ((train.labels[rows].sum(axis=0) > 0) == (train.labels.sum(axis=0) > 0)).all()
    assert record["seed"] == 2 and "Pericardial effusion" in capsys.readouterr().out


def test_curate_bad_input(ct_rate_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["curate", str(ct_rate_dir), "--fraction", "1.5"]) == 2
    assert "fraction must be in (0, 1]" in capsys.readouterr().err
    assert main(["curate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
