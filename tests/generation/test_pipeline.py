"""GenerationPipeline end to end on the session-trained tiny models and real data (writing its result:
test_output.py; ``ctrag generate``: tests/cli/test_cmd_generate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctrag.data.labels import COARSE_LABELS
from ctrag.data.nifti import Volume
from ctrag.errors import CheckpointMismatchError, DataValidationError, InvalidInputError, WeightsNotFoundError
from ctrag.generation.pipeline import GenerationPipeline
from tests.generation.conftest import SAMPLE

CTRATE_MASK = SAMPLE / "ct_rate_nc_sa" / "ragtext2ct_ctrate_chest_mask_total.nii.gz"


def test_result_grid_affine_and_hu(result, pipeline) -> None:  # type: ignore[no-untyped-def]
    cfg = pipeline.config
    assert result.volume.shape == tuple(cfg.sampler.output_shape)
    assert result.spacing == pytest.approx(cfg.preprocess.spacing)
    assert nib.aff2axcodes(result.affine) == ("R", "A", "S")
    assert float(result.volume.min()) >= -1000.0 and float(result.volume.max()) <= 1000.0
    assert float(result.volume.std()) > 50  # a structured volume, not a constant
    # the proxy lies on the same grid and holds coarse labels only
    assert result.mask is not None and result.mask.shape == result.volume.shape
    assert set(np.unique(result.mask).tolist()) <= {0, *COARSE_LABELS}
    assert result.retrieved and result.retrieved[0]["case_id"] != "lidc_idri_0314"


def test_same_seed_same_volume_other_seed_differs(pipeline, val_reports, result) -> None:  # type: ignore[no-untyped-def]
    again = pipeline(val_reports[0], strategy="nearest", seed=3)
    other = pipeline(val_reports[0], strategy="nearest", seed=4)
    assert np.array_equal(again.volume, result.volume)
    assert not np.allclose(other.volume, result.volume)


def test_text_only_baseline_and_user_mask_on_another_grid(pipeline, val_reports) -> None:  # type: ignore[no-untyped-def]
    text_only = pipeline(val_reports[1], strategy="none", seed=0)
    assert text_only.mask is None and text_only.mask_source == "none" and text_only.control_scale == 0.0
    # the full-resolution CT-RATE TotalSegmentator mask (0.75 mm, 512x512x128) as spatial control
    user = pipeline(val_reports[1], mask=CTRATE_MASK, seed=0)
    assert user.mask_source == "user" and not user.retrieved
    assert user.mask is not None and set(np.unique(user.mask).tolist()) >= {0, 1, 2, 3}
    assert not np.allclose(user.volume, text_only.volume)


def test_save_and_load_pretrained_round_trip(pipeline, val_reports, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pipeline.save_pretrained(tmp_path / "copy")
    index = json.loads((tmp_path / "copy" / "pipeline.json").read_text())
    assert index["components"] == {"vae": "vae", "unet": "unet", "controlnet": "controlnet", "sampler": "sampler"}
    loaded = GenerationPipeline.from_pretrained(
        tmp_path / "copy", encoder=pipeline.encoder, retriever=pipeline.retriever
    )
    a = pipeline(val_reports[2], seed=1, steps=4)
    b = loaded(val_reports[2], seed=1, steps=4)
    assert np.array_equal(a.volume, b.volume) and a.weights == b.weights


def test_bad_inputs_are_refused_before_work(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="report is empty"):
        pipeline("   ")
    with pytest.raises(InvalidInputError, match="over the limit of 32768 bytes"):  # the limit of ctrag ingest
        pipeline("Normal chest CT. " * 2000)
    with pytest.raises(InvalidInputError, match="strategy"):
        pipeline("Normal chest CT.", strategy="closest")
    unknown = np.zeros((20, 20, 10), np.uint8)
    unknown[5:10, 5:10, 2:5] = 200
    path = tmp_path / "unknown.nii.gz"
    nib.save(nib.Nifti1Image(unknown, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    with pytest.raises(DataValidationError, match=r"unknown label ids \[200\]"):
        pipeline("Normal chest CT.", mask=path)
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.uint8), np.eye(4)), four_d)
    with pytest.raises(DataValidationError, match="3-D"):
        pipeline("Normal chest CT.", mask=four_d)
    with pytest.raises(InvalidInputError, match="3-D"):
        pipeline("Normal chest CT.", mask=Volume(array=np.zeros((4, 4, 4, 1, 1), np.uint8), affine=np.eye(4)))


def test_weights_from_another_config_or_missing(trained_run: Path, text_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckpointMismatchError, match="another config"):
        GenerationPipeline.from_pretrained(
            trained_run, overrides=["diffusion.channels=[16,32,32]"], encoder=text_encoder
        )
    with pytest.raises(WeightsNotFoundError, match="not found"):
        GenerationPipeline.from_pretrained(tmp_path / "nothing", encoder=text_encoder)


def test_progress_is_reported_through_progress_fn(pipeline, val_reports) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple[str, int, int]] = []
    pipeline(val_reports[0], strategy="none", seed=0, steps=3, progress=lambda *a: calls.append(a))
    assert calls == [("sampling", 0, 3), ("sampling", 1, 3), ("sampling", 2, 3), ("sampling", 3, 3)]


def test_a_report_is_encoded_once_for_retrieval_prompt_and_baseline(trained_run: Path, gen_index: Path) -> None:  # type: ignore[no-untyped-def]
    """Retrieval, the prompt and the text-only baseline share one memo of the report's embedding (ctrag generate
    --baseline encoded the same report three times and printed its truncation warning three times)."""
    from ctrag.encoders.cache import MemoTextEncoder
    from ctrag.generation.run_folder import create_text_encoder

    class CountingEncoder:
        def __init__(self) -> None:
            self.inner = create_text_encoder({"name_or_path": "minilm", "weights": None}, "cpu")
            self.name, self.dim, self.fingerprint = self.inner.name, self.inner.dim, self.inner.fingerprint
            self.texts: list[str] = []

        def encode_text(self, texts, batch_size=32):  # type: ignore[no-untyped-def]
            self.texts += list(texts)
            return self.inner.encode_text(texts, batch_size=batch_size)

    counting = CountingEncoder()
    pipe = GenerationPipeline.from_pretrained(trained_run, encoder=counting, index_dir=gen_index)
    assert isinstance(pipe.encoder, MemoTextEncoder)
    report = "Right upper lobe mass. No pleural effusion."
    first = pipe(report, strategy="nearest", seed=0, steps=2)
    pipe(report, strategy="none", seed=0, steps=2, grid=first.affine)
    pipe(report, strategy="nearest", seed=1, steps=2)
    assert counting.texts == [report]
