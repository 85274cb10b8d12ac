"""``ctrag pair`` on shipped CTs (real masks, annotation-derived captions) and real CT-RATE train/val reports."""

from __future__ import annotations

import json

from testsupport.index_data import ct_cases_with_masks, read_ct_rate

from ctrag.cli import main
from ctrag.data.case import Corpus


def test_pair_writes_marked_manifest_and_leaves_eval_cases_alone(tmp_path) -> None:
    cts = ct_cases_with_masks()
    cts.append(cts[0].evolve(case_id="held_out_ct", patient_id="held_out", split="test"))
    src = Corpus(cts).save(tmp_path / "cts")
    reports = Corpus(read_ct_rate("train", 60) + read_ct_rate("val", 5)).save(tmp_path / "reports")
    out = tmp_path / "paired" / "manifest.jsonl"
    assert main(["pair", str(src), "--out", str(out), "--reports", str(reports), "--method", "top1"]) == 0
    loaded = Corpus.load(out)
    assert len(loaded) == 3
    assert loaded.get("held_out_ct").pairing is None and loaded.get("held_out_ct").report_source != "pseudo-paired"
    summary = json.loads((out.parent / "manifest.pairs.json").read_text())
    assert summary["pseudo_pairs"] == 2 and summary["not_train_left_out"] == {"ct": 1, "reports": 5}
    for pair in summary["pairs"]:
        case = loaded.get(pair["ct_case_id"])
        assert case.pairing is not None and case.pairing["report_case_id"] == pair["report_case_id"]
        assert pair["report_case_id"].startswith("train_")


def test_pair_bad_method_is_a_clean_error(tmp_path, capsys) -> None:
    src = Corpus(ct_cases_with_masks()).save(tmp_path / "cts")
    assert main(["pair", str(src), "--out", str(tmp_path / "o.jsonl"), "--method", "best"]) != 0
    err = capsys.readouterr().err
    assert "method must be one of" in err and "Traceback" not in err
