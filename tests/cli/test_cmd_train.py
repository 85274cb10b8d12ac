"""``ctrag train encoder|vae|diffusion|controlnet|classifier`` in-process on the shipped real CTs: run folders,
kill-and-resume, a config that cannot continue a run, the classifier's label sources, clear errors. The generator
runs continue the session-trained tiny run (root conftest); the encoder runs use a test-size tower."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import torch

from ctrag.cli import main
from ctrag.data.case import Corpus
from ctrag.data.labels import CT_RATE_LABELS
from ctrag.evaluation.classifier import ClinicalClassifier
from ctrag.generation.training import LOG_FILE, STATE_FILE

VAE_RESUME = (
    "train_vae.steps_per_epoch=6",
    "train_vae.batch_size=2",
    "train_vae.crop_shape=[32,32,16]",
    "train_vae.save_every=2",
    "train_vae.ema_decay=0.9",
)


def _losses(run: Path, component: str) -> list[float]:
    return json.loads((run / component / LOG_FILE).read_text())["losses"]


def test_cli_train_encoder(tmp_path, ct_cases, tiny_tower_json):
    corpus = tmp_path / "corpus"
    Corpus(ct_cases).save(corpus)
    out = tmp_path / "runs" / "encoder"
    args = ["train", "encoder", "--corpus", str(corpus), "--config", "tiny-cpu", "--out", str(out), "--epochs", "2",
            "--set", f"volume_model={tiny_tower_json}", "--set", "train.views_per_case=1", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert (out / "encoder_config.json").is_file()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["epochs"] == 2 and summary["n_pairs"] == 4
    # a second call resumes (nothing left to do at 2 epochs) and still exits 0
    assert main(args) == 0
    bad = ["train", "encoder", "--corpus", str(corpus), "--out", str(tmp_path / "x"), "--set", "train.split=val",
           "--no-progress"]  # fmt: skip
    assert main(bad) == 2


def test_vae_killed_and_resumed_repeats_the_loss_curve(tmp_path: Path, gen_corpus) -> None:  # type: ignore[no-untyped-def]
    corpus_dir = str(gen_corpus.root)
    sets = [a for o in VAE_RESUME for a in ("--set", o)]
    common = ["train", "vae", "--corpus", corpus_dir, "--threads", "1", "--no-progress", *sets]
    assert main([*common, "--out", str(tmp_path / "straight")]) == 0
    # "kill" after 3 of 6 steps (a checkpoint was written at step 2 and at the stop), then resume
    assert main([*common, "--out", str(tmp_path / "resumed"), "--stop-after", "3"]) == 0
    assert (tmp_path / "resumed" / "vae" / STATE_FILE).is_file()
    assert not (tmp_path / "resumed" / "vae" / "model.pt").exists()  # nothing published before the end
    assert len(_losses(tmp_path / "resumed", "vae")) == 3
    assert main([*common, "--out", str(tmp_path / "resumed")]) == 0
    straight, resumed = _losses(tmp_path / "straight", "vae"), _losses(tmp_path / "resumed", "vae")
    assert len(straight) == 6 and straight == resumed
    a = torch.load(tmp_path / "straight" / "vae" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "vae" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # final (EMA) weights identical too
    # another config cannot continue this run
    assert main([*common, "--out", str(tmp_path / "resumed"), "--set", "train_vae.lr=0.5"]) == 3


def test_cli_trains_unet_then_controlnet_in_a_run_folder(tmp_path: Path, trained_run: Path, gen_corpus) -> None:  # type: ignore[no-untyped-def]
    """``ctrag train diffusion`` and ``ctrag train controlnet`` (one shared CLI path) continue a run folder."""
    run = tmp_path / "run"
    shutil.copytree(trained_run / "vae", run / "vae")
    shutil.copy(trained_run / "pipeline.json", run / "pipeline.json")
    for part in ("diffusion", "controlnet"):
        sets = [f"train_{part}.steps_per_epoch=2", f"train_{part}.batch_size=2", f"train_{part}.bank_crops=4"]
        argv = ["train", part, "--corpus", str(gen_corpus.root), "--out", str(run), "--threads", "1", "--no-progress"]
        assert main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    assert len(_losses(run, "unet")) == 2 and len(_losses(run, "controlnet")) == 2
    index = json.loads((run / "pipeline.json").read_text())
    assert index["encoder"]["name_or_path"] == "minilm"  # the UNet's text space is recorded for generation


def _label_file(path: Path, rows: dict[str, int]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", *CT_RATE_LABELS, "label_source"])
        for case_id, nodule in rows.items():
            labels = [0] * 18
            labels[CT_RATE_LABELS.index("Lung nodule")] = nodule
            writer.writerow([case_id, *labels, "annotation-derived (test)"])
    return path


def test_train_classifier_records_label_sources(tmp_path: Path, ct_corpus_dir: Path) -> None:
    labels = _label_file(tmp_path / "labels.csv", {"A0001": 1, "ts_sm": 0})
    out = tmp_path / "clf"
    code = main(
        [
            "train", "classifier", "--corpus", str(ct_corpus_dir), "--out", str(out), "--labels", str(labels),
            "--set", "epochs=2", "--set", "input_shape=[16,16,12]", "--set", "trunk_channels=[4,8,8,8]",
            "--set", "reducer_channels=[8,4]", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    clf = ClinicalClassifier.load(out)
    assert clf.metadata["n_train"] == 2  # the test-split CT is never used for training
    assert clf.metadata["label_sources"] == ["annotation-derived (test)"]
    assert {c["case_id"] for c in clf.metadata["cases"]} == {"A0001", "ts_sm"}
    assert clf.metadata["positives_per_label"] == {"Lung nodule": 1}
    assert json.loads((out / "classifier.json").read_text())["config"]["input_shape"] == [16, 16, 12]


def test_train_classifier_without_labels_fails_clearly(tmp_path: Path, ct_corpus_dir: Path, capsys) -> None:
    code = main(["train", "classifier", "--corpus", str(ct_corpus_dir), "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == 2
    assert "nothing to train the classifier on" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    bad = _label_file(tmp_path / "bad.csv", {"nope": 1})
    code = main(
        ["train", "classifier", "--corpus", str(ct_corpus_dir), "--out", str(tmp_path / "y"), "--labels", str(bad)]
    )
    assert code == 2 and "not in the corpus" in capsys.readouterr().err


def test_train_classifier_refuses_two_label_rows_for_one_ct(tmp_path: Path, ct_corpus_dir: Path, capsys) -> None:
    """Two label rows for one CT silently kept the last; now refused, naming both lines."""
    labels = _label_file(tmp_path / "labels.csv", {"A0001": 1, "ts_sm": 0})
    with open(labels, "a", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerow(["A0001", *([0] * 18), "another source"])
    out = tmp_path / "clf"
    code = main(["train", "classifier", "--corpus", str(ct_corpus_dir), "--out", str(out), "--labels", str(labels)])
    err = capsys.readouterr().err
    assert code == 2 and "'A0001' appears in two rows (lines 2 and 4)" in err
    assert not out.exists()
