"""``ctrag evaluate retrieval|generation|reports`` in-process: a run on a subset of the shipped CT-RATE split with an
LSA encoder (``testsupport.lsa``, a real text embedding that costs a second), report metrics of real reports,
clear errors for bad input and bad config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from testsupport.lsa import LsaEncoder

from ctrag.cli import main


def _write_subset(src: Path, dst: Path, n_train: int, n_val: int) -> None:
    dst.mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val)):
        for name in (f"{split}.csv", f"map_{split}_classifier.csv"):
            with open(src / name, encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh))
            with open(dst / name, "w", encoding="utf-8", newline="") as fh:
                csv.writer(fh).writerows(rows[: n + 1])


def test_cli_evaluate_retrieval(ct_rate_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ctrag.encoders import factory

    data = tmp_path / "data"
    _write_subset(ct_rate_dir, data, 120, 15)
    with open(data / "train.csv", encoding="utf-8", newline="") as fh:
        texts = [row["report_text"] for row in csv.DictReader(fh)]
    made: list[LsaEncoder] = []

    def fake_create_encoder(name: str, weights: object = None, device: str = "cpu", **kw: object) -> LsaEncoder:
        assert name == "minilm" and device == "cpu"
        made.append(LsaEncoder(texts, dim=32))
        return made[-1]

    monkeypatch.setattr(factory, "create_encoder", fake_create_encoder)
    out = tmp_path / "out"
    code = main(
        ["evaluate", "retrieval", str(data), "--out", str(out), "--config", "tiny-cpu", "--bootstrap", "100",
         "--no-ablations", "--no-progress", "--set", "cv_folds=2", "--set", "grid.lcs=[0.0, 1.0, 2.0]"]
    )  # fmt: skip
    assert code == 0
    payload = json.loads((out / "retrieval_eval.json").read_text())
    assert payload["data"]["index_rows"] == 120 and payload["data"]["queries"] == 15
    assert payload["setup"]["hybrid_config"]["cv_folds"] == 2
    assert payload["setup"]["hybrid_config"]["grid"]["lcs"] == [0.0, 1.0, 2.0]
    assert "--set cv_folds=2" in payload["command"]
    assert (out / "retrieval_eval.md").is_file() and (out / "retrieval_tradeoff.png").stat().st_size > 1000


def test_cli_bad_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "retrieval", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert main(["evaluate", "retrieval", str(tmp_path), "--set", "nope=1", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_evaluate_reports_writes_metrics(tmp_path: Path, ct_rate_dir: Path, capsys) -> None:
    with open(ct_rate_dir / "val.csv", encoding="utf-8") as fh:
        texts = [row["report_text"] for row in csv.DictReader(fh)][:4]
    refs = tmp_path / "refs.jsonl"
    hyps = tmp_path / "hyps.csv"
    refs.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    with open(hyps, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        for i, t in enumerate(texts):
            writer.writerow([str(i), t if i < 2 else texts[0]])
    out = tmp_path / "res"
    args = ["evaluate", "reports", "--refs", str(refs), "--hyps", str(hyps), "--out", str(out), "--no-meteor"]
    labels = ["--fit-labels", str(ct_rate_dir / "train.csv"), "--label-val", str(ct_rate_dir / "val.csv")]
    assert main([*args, *labels]) == 0
    record = json.loads((out / "report_metrics.json").read_text())
    scores = record["methods"]["hyps"]  # a bare --hyps FILE is named by its stem
    assert 0.3 < scores["bleu_4"] < 1.0 and scores["meteor"] is None
    assert record["label_extractor_quality"]["n_reports"] == 100
    # The default extractor is ctrag.labels' (val macro-F1 ~0.95 at its own thresholds), named in the table.
    assert record["label_extractor"]["name"] == "LabelExtractor" and record["label_extractor"]["fingerprint"]
    assert record["label_extractor_quality"]["macro_f1"] > 0.85
    assert "Labels read by ctrag.labels.extractor.LabelExtractor" in (out / "report_metrics.md").read_text()
    assert 0.0 < scores["clinical_efficacy"]["f1_micro"] < 1.0
    lo, hi = scores["ci"]["ce_f1_micro"]
    assert lo <= scores["clinical_efficacy"]["f1_micro"] <= hi and lo < hi
    assert "METEOR" in (out / "report_metrics.md").read_text()
    hyps.write_text("id,text\n0,only one\n")
    code = main(["evaluate", "reports", "--refs", str(refs), "--hyps", str(hyps), "--out", str(out), "--no-meteor"])
    assert code == 2
    # two generated reports for one id: refused naming both lines (it silently kept the last one)
    hyps.write_text("id,text\n0,first\n1,other\n0,second\n")
    capsys.readouterr()
    code = main(["evaluate", "reports", "--refs", str(refs), "--hyps", str(hyps), "--out", str(out), "--no-meteor"])
    err = capsys.readouterr().err
    assert code == 2 and "lines 2 and 4" in err and "Traceback" not in err


def test_evaluate_reports_several_methods_in_one_table_with_paired_cis(
    tmp_path: Path, ct_rate_dir: Path, capsys
) -> None:
    """Two methods on 12 real val reports: one table, CIs for each, the difference to --reference with its CI."""
    with open(ct_rate_dir / "val.csv", encoding="utf-8") as fh:
        texts = [row["report_text"] for row in csv.DictReader(fh)][:12]
    refs, out = tmp_path / "refs.jsonl", tmp_path / "res"
    refs.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    shifted = tmp_path / "shifted.jsonl"  # every report answered with another case's report
    shifted.write_text("".join(json.dumps({"id": str(i), "text": texts[(i + 1) % 12]}) + "\n" for i in range(12)))
    copied = tmp_path / "copied.jsonl"  # two thirds answered with the case's own report
    copied.write_text(
        "".join(json.dumps({"id": str(i), "text": texts[i if i % 3 else (i + 1) % 12]}) + "\n" for i in range(12))
    )
    base = ["evaluate", "reports", "--refs", str(refs), "--out", str(out), "--no-meteor", "--bootstrap", "300"]
    hyps = ["--hyps", f"other={shifted}", "--hyps", f"own={copied}"]
    assert main([*base, *hyps, "--reference", "other"]) == 0
    record = json.loads((out / "report_metrics.json").read_text())
    assert list(record["methods"]) == ["other", "own"] and record["reference_method"] == "other"
    assert record["bootstrap"]["n_resamples"] == 300 and record["n_reports"] == 12
    own, other = record["methods"]["own"], record["methods"]["other"]
    for entry in (own, other):
        lo, hi = entry["ci"]["rouge_l"]
        assert lo <= entry["rouge_l"] <= hi
    gain = own["difference"]["rouge_l"]
    assert gain["value"] == pytest.approx(own["rouge_l"] - other["rouge_l"]) and gain["excludes_zero"]
    assert "difference" not in other
    table = (out / "report_metrics.md").read_text()
    assert "| other |" in table and "| own |" in table and "Difference to other" in table
    capsys.readouterr()
    assert main([*base, *hyps, "--reference", "third"]) == 2
    assert main([*base, "--hyps", f"a={shifted}", "--hyps", f"a={copied}"]) == 2
    copied.write_text(json.dumps({"id": "0", "text": "x"}) + "\n")
    assert main([*base, *hyps]) == 2
    assert main([*base, "--hyps", str(shifted), "--bootstrap", "-1"]) == 2
    err = capsys.readouterr().err
    assert "'third' is not one of" in err and "given twice" in err and "own (" in err and "missing" in err
    assert "--bootstrap -1" in err and "Traceback" not in err


def test_evaluate_generation_config_errors(tmp_path: Path, ct_corpus_dir: Path, capsys) -> None:
    code = main(["evaluate", "generation", "--out", str(tmp_path), "--set", "methods=[nearest,telepathy]"])
    assert code == 2 and "telepathy" in capsys.readouterr().err
    code = main(["evaluate", "generation", "--out", str(tmp_path), "--corpus", str(ct_corpus_dir), "--no-progress"])
    assert code == 2 and "evaluation.pipeline" in capsys.readouterr().err


def test_evaluate_reports_protocols(tmp_path: Path, ct_rate_dir: Path, capsys) -> None:
    with open(ct_rate_dir / "val.csv", encoding="utf-8") as fh:
        texts = [row["report_text"] for row in csv.DictReader(fh)][:3]
    refs, hyps, out = tmp_path / "refs.jsonl", tmp_path / "hyps.jsonl", tmp_path / "res"
    refs.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    hyps.write_text("".join(json.dumps({"id": str(i), "text": texts[0]}) + "\n" for i in range(3)))
    base = ["evaluate", "reports", "--refs", str(refs), "--hyps", str(hyps), "--out", str(out)]
    assert main([*base, "--protocol", "reg2rg", "--no-meteor"]) == 0
    record = json.loads((out / "report_metrics.json").read_text())
    table = (out / "report_metrics.md").read_text()
    assert record["protocol"] == "reg2rg" and "protocol reg2rg" in table and "NLTK METEOR" in table
    assert 0.0 < record["methods"]["hyps"]["bleu_4"] < 1.0 and "Per-report mean ± sd" in table
    assert record["methods"]["hyps"]["per_report"]["bleu_4"]["sd"] > 0  # one exact pair, two mismatched ones
    capsys.readouterr()
    assert main([*base, "--protocol", "wer"]) == 2
    err = capsys.readouterr().err
    assert "--protocol 'wer'" in err and "coco, reg2rg" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--protocol", "reg2rg", "--nltk-data", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "corpora/wordnet" in err and "Traceback" not in err


def test_cli_evaluate_retrieval_reports_the_modality_gap_of_a_shared_space_encoder(
    ct_rate_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ct_cases, capsys
) -> None:
    from dataclasses import replace

    from ctrag.cli import _shared
    from ctrag.data.case import Corpus
    from ctrag.encoders.clip import SharedSpaceEncoder
    from tests.encoders.conftest import PRE, SMALL, make_tower

    data = tmp_path / "data"
    _write_subset(ct_rate_dir, data, 60, 8)
    with open(data / "train.csv", encoding="utf-8", newline="") as fh:
        texts = [row["report_text"] for row in csv.DictReader(fh)]
    lsa = LsaEncoder(texts, dim=32)
    shared = SharedSpaceEncoder(lsa, make_tower(cfg=replace(SMALL, embed_dim=32)), PRE)
    monkeypatch.setattr(_shared, "load_encoder", lambda name, w, d: shared if name == "tower-dir" else lsa)
    corpus = tmp_path / "corpus"
    Corpus(ct_cases).save(corpus)
    args = ["evaluate", "retrieval", str(data), "--bootstrap", "50", "--no-ablations", "--no-progress",
            "--set", "cv_folds=2", "--gap-corpus", str(corpus)]  # fmt: skip
    out = tmp_path / "out"
    assert main([*args, "--out", str(out), "--encoder", "tower-dir"]) == 0
    record = json.loads((out / "modality_gap.json").read_text())
    assert record["pairs"] == len(ct_cases) and record["pair_sources"] == {"annotation-derived": len(ct_cases)}
    gap = record["modality_gap"]
    # an untrained tower is nowhere near the report vectors: a large gap, matched pairs far apart
    assert gap["gap_norm"] > 0.2 and gap["alignment"] > 0.5
    assert "--gap-corpus" in record["command"]
    assert "not all CTs with their own radiologist report" in capsys.readouterr().out

    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "o2")]) == 2  # text-only encoder: refused before any work
    assert "volume side" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_evaluate_generation_scores_external_outputs_without_a_pipeline(
    tmp_path: Path, ct_corpus_dir: Path, capsys
) -> None:
    """Another method's outputs (here: the corpus' own test CT, copied) scored with no generator at all."""
    import shutil

    from ctrag.data.case import Corpus

    lidc = Corpus.load(ct_corpus_dir).get("lidc")
    ext = tmp_path / "GenerateCT"
    ext.mkdir()
    shutil.copy(lidc.volume_path, ext / "lidc_s0.nii.gz")
    (ext / "lidc_s1.nii.gz").write_bytes(b"\x1f\x8b not really")
    (ext / "outputs.csv").write_text("case_id,seed,path\nlidc,0,lidc_s0.nii.gz\nlidc,1,lidc_s1.nii.gz\n")
    out = tmp_path / "res"
    args = ["evaluate", "generation", "--out", str(out), "--corpus", str(ct_corpus_dir), "--no-progress",
            "--external", f"GenerateCT={ext / 'outputs.csv'}", "--methods", "GenerateCT",
            "--set", "report_split=null", "--set", "seeds=[0,1,2]", "--set", "figures=false",
            "--set", "fid.volume_shape=[32,32,16]", "--set", "fid.slice_size=32", "--set", "fid.crops_per_volume=2",
            "--set", "n_bootstrap=100"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    record = json.loads((out / "results.json").read_text())
    assert set(record["methods"]) == {"GenerateCT"} and record["config"]["reference_method"] == "GenerateCT"
    ext_info = record["methods"]["GenerateCT"]["external"]
    assert ext_info["scored"] == 1 and ext_info["missing"] == ["lidc/seed2"] and len(ext_info["unreadable"]) == 1
    flat = "".join(captured.out.split())  # rich wraps long paths
    assert "warning:GenerateCT:skipped" in flat and "lidc_s1.nii.gz" in flat and "lidc/seed2" in flat
    md = (out / "results.md").read_text()
    assert "| GenerateCT † |" in md and "external outputs, scored by ctrag" in md
    assert "segmenter: classical (HU + morphology)" in md and "not TotalSegmentator" in md
    assert "--external" not in md or "external.GenerateCT" in md  # the command line is recorded as --set overrides
    # An unknown row name and a bad spec are refused with a message, not a traceback.
    assert main([*args[:6], "--external", "GenerateCT", "--methods", "GenerateCT"]) == 2
    assert main([*args[:6], "--external", f"G={ext / 'outputs.csv'}", "--methods", "MedSyn"]) == 2
    err = capsys.readouterr().err
    assert "expected NAME=CSV" in err and "unknown ['MedSyn']" in err and "Traceback" not in err
