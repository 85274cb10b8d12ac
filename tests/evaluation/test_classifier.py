"""CT-Net-like classifier: trains on real CTs with labels built here, saves/loads exactly, feeds FID extractors.

No shipped CT carries CT-RATE labels, so these tests exercise the code path with labels the test constructs from
annotations (Lung-PET-CT-Dx A0001/A0002 and LIDC-IDRI-0314 each have a lung lesion; the TotalSegmentator
example is used as the lesion-free case). Nothing here measures clinical accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError
from ctrag.evaluation.classifier import TRAIN_STAGE, ClassifierConfig, ClinicalClassifier, train_classifier
from ctrag.evaluation.features import create_extractor
from ctrag.evaluation.volumes import prepare_volume

NODULE = CT_RATE_LABELS.index("Lung nodule")
TINY = ClassifierConfig(
    input_shape=(32, 32, 24),
    trunk_channels=(8, 16, 16, 32),
    reducer_channels=(16, 8),
    dropout=0.0,
    epochs=40,
    batch_size=2,
    lr=3e-3,
)


@pytest.fixture(scope="module")
def trained(real_volumes) -> tuple[ClinicalClassifier, list[np.ndarray], np.ndarray, list[float]]:
    names = ["A0001", "A0002", "LIDC0314", "TS_SM"]
    arrays = [prepare_volume(real_volumes[n], TINY.input_shape) for n in names]
    labels = np.zeros((4, len(CT_RATE_LABELS)), dtype=np.float32)
    labels[:3, NODULE] = 1.0  # annotation-derived: a lung lesion in the three lung-cancer CTs
    calls: list[tuple[str, int, int]] = []
    clf = train_classifier(
        arrays,
        labels,
        TINY,
        metadata={"label_source": "annotation-derived (test)"},
        progress=lambda *a: calls.append(a),
    )
    assert calls == [(TRAIN_STAGE, e, TINY.epochs) for e in range(1, TINY.epochs + 1)]
    losses = clf.metadata["train_losses"]
    assert losses[-1] == clf.metadata["final_train_loss"]
    return clf, arrays, labels, losses


def test_training_fits_constructed_labels(trained) -> None:
    clf, arrays, _, losses = trained
    assert len(losses) == TINY.epochs
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:3])
    prob = clf.predict_proba(arrays)
    assert prob.shape == (4, 18)
    assert prob[:3, NODULE].min() > prob[3, NODULE]  # separates the training cases on the trained label
    assert not any(p.requires_grad for p in clf.model.parameters())  # frozen for evaluation


def test_training_is_reproducible_and_leaves_global_rng_alone(real_volumes) -> None:
    cfg = ClassifierConfig(input_shape=(16, 16, 12), trunk_channels=(4, 8, 8, 8), reducer_channels=(8, 4), epochs=2)
    arrays = [prepare_volume(real_volumes[n], cfg.input_shape) for n in ("A0001", "TS_SM")]
    labels = np.zeros((2, 18), dtype=np.float32)
    labels[0, NODULE] = 1
    state = torch.random.get_rng_state()
    p1 = train_classifier(arrays, labels, cfg).predict_proba(arrays)
    p2 = train_classifier(arrays, labels, cfg).predict_proba(arrays)
    np.testing.assert_array_equal(p1, p2)
    assert torch.equal(state, torch.random.get_rng_state())


def test_save_load_roundtrip_and_extractors(trained, tmp_path: Path, real_volumes) -> None:
    clf, arrays, _, _ = trained
    folder = clf.save(tmp_path / "clf")
    loaded = ClinicalClassifier.load(folder)
    np.testing.assert_allclose(loaded.predict_proba(arrays), clf.predict_proba(arrays), rtol=1e-6)
    # A Volume is prepared with the saved window/shape: same numbers as the prepared array.
    np.testing.assert_allclose(loaded.predict_proba([real_volumes["A0001"]]), clf.predict_proba(arrays[:1]), rtol=1e-6)
    assert loaded.metadata["label_source"] == "annotation-derived (test)"

    vol = create_extractor("ctnet-volume", folder)
    feats = vol(torch.from_numpy(np.stack(arrays))[:, None])
    assert feats.shape == (4, TINY.reducer_channels[-1])
    assert vol.fingerprint == f"ctnet-volume@{loaded.fingerprint[:16]}"
    sl = create_extractor("ctnet-slice", folder)
    assert sl.preferred_shape == (32, 32)
    assert sl(torch.rand(3, 1, 32, 32)).shape == (3, TINY.trunk_channels[-1])

    (folder / "classifier.pt").write_bytes((folder / "classifier.pt").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointMismatchError, match="sha256"):
        ClinicalClassifier.load(folder)
    with pytest.raises(WeightsNotFoundError, match="ctrag train classifier"):
        ClinicalClassifier.load(tmp_path / "nothing")


def test_weights_that_do_not_fit_the_config_are_refused(trained, tmp_path: Path) -> None:
    """The loader reads through the one checkpoint reader and loads strictly: a config edited after training
    (another trunk width) fails naming the file and the mismatch, instead of a half-loaded network."""
    clf = trained[0]
    folder = clf.save(tmp_path / "clf")
    record = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
    record["config"]["trunk_channels"] = [8, 16, 16, 48]
    (folder / "classifier.json").write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(
        CheckpointMismatchError, match=r"classifier\.pt: checkpoint does not fit CTNet: .*shape mismatch"
    ):
        ClinicalClassifier.load(folder)


def test_bad_inputs_are_refused(trained) -> None:
    clf, arrays, labels, _ = trained
    with pytest.raises(InvalidInputError, match="prepared volumes of shape"):
        clf.predict_proba([np.zeros((8, 8, 8), dtype=np.float32)])
    with pytest.raises(InvalidInputError, match="labels must be"):
        train_classifier(arrays, labels[:, :5], TINY)
    with pytest.raises(InvalidInputError, match="one label row per volume"):
        train_classifier(arrays[:2], labels, TINY)


def test_classifier_training_refuses_what_the_evaluation_evaluates(tmp_path: Path, sample_dir: Path) -> None:
    """Bug 2f: the classifier trained on any split, including the ``val`` reports the tiny evaluation uses."""
    from ctrag.data.heldout import HeldOut, held_out_set
    from ctrag.data.ingest import ingest
    from ctrag.errors import LeakageError
    from ctrag.evaluation.classifier import train_from_corpus

    corpus = ingest([sample_dir / "ct", sample_dir / "ct_rate_nc_sa"], tmp_path / "corpus").corpus
    cfg = ClassifierConfig(input_shape=(16, 16, 12), trunk_channels=(4, 8, 8, 8), reducer_channels=(8, 4), epochs=1)
    with pytest.raises(LeakageError, match=r"\['val'\]"):
        train_from_corpus(list(corpus), cfg, split="val", held_out=held_out_set("tiny-cpu"))
    with pytest.raises(LeakageError, match=r"\['test'\]"):
        train_from_corpus(list(corpus), cfg, split="test")  # the test split is held out even without a preset
    labels = tmp_path / "labels.csv"
    import csv

    with open(labels, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["case_id", *CT_RATE_LABELS], ["lung_pet_ct_dx_A0001", *["1"] * len(CT_RATE_LABELS)]])
    named = HeldOut(case_ids=("lung_pet_ct_dx_A0001",), source="a test evaluation")
    with pytest.raises(LeakageError, match="lung_pet_ct_dx_A0001"):
        train_from_corpus(list(corpus), cfg, split="train", label_file=labels, held_out=named)


def test_classifier_records_and_uses_its_image_space(trained, tmp_path: Path, real_volumes) -> None:
    """A classifier trained in a preset's image space prepares evaluation inputs from that space after a reload
    (one field of view for training, real and generated CTs), and classifiers saved before it was recorded load
    with the default space."""
    from ctrag.data.transforms import PreprocessConfig

    clf, _, _, _ = trained
    small = PreprocessConfig(spacing=(4.0, 4.0, 4.0), size=(64, 64, 32))
    clf.space = small
    folder = clf.save(tmp_path / "clf")
    loaded = ClinicalClassifier.load(folder)
    assert loaded.space == small
    ct = real_volumes["A0001"]
    np.testing.assert_allclose(loaded.prepare(ct), prepare_volume(ct, TINY.input_shape, space=small), atol=1e-6)
    assert not np.allclose(loaded.prepare(ct), prepare_volume(ct, TINY.input_shape), atol=1e-3)
    record = json.loads((folder / "classifier.json").read_text(encoding="utf-8"))
    del record["image_space"]
    record["config"]["hu_window"] = [-1000.0, 1000.0]
    (folder / "classifier.json").write_text(json.dumps(record), encoding="utf-8")
    assert ClinicalClassifier.load(folder).space == PreprocessConfig()
