"""The ONNX export of the packaged MiniLM: the same vectors and fingerprint as the torch encoder, and refusals."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctrag.encoders.onnx_text import (
    MANIFEST,
    MIN_EXPORT_COSINE,
    MODEL_FILE,
    OnnxTextEncoder,
    can_export,
    export_text_encoder,
)
from ctrag.errors import InvalidInputError, WeightsNotFoundError


@pytest.fixture(scope="session")
def onnx_dir(minilm, ct_rate_reports: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("onnx") / "encoder"
    export = export_text_encoder(minilm, ct_rate_reports[:8], out)
    assert export.min_cosine >= MIN_EXPORT_COSINE
    return out


def test_export_gives_the_torch_vectors_and_fingerprint(onnx_dir: Path, minilm, ct_rate_reports: list[str]) -> None:  # type: ignore[no-untyped-def]
    onnx = OnnxTextEncoder(onnx_dir)
    assert onnx.fingerprint == minilm.fingerprint and onnx.dim == minilm.dim == 384
    assert onnx.max_tokens == minilm.max_tokens
    texts = [*ct_rate_reports, "No effusion.", "  Mass in the RIGHT lung.  ", "x"]  # short, padded, cased
    cos = np.sum(onnx.encode_text(texts) * minilm.encode_text(texts), axis=1)
    assert cos.min() >= MIN_EXPORT_COSINE, cos.min()
    assert onnx.count_tokens(texts) == minilm.count_tokens(texts)
    manifest = json.loads((onnx_dir / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["check"]["reports"] == 8 and manifest["check"]["min_cosine"] >= MIN_EXPORT_COSINE


def test_batches_do_not_change_vectors(onnx_dir: Path, ct_rate_reports: list[str]) -> None:
    onnx = OnnxTextEncoder(onnx_dir)
    together = onnx.encode_text(ct_rate_reports[:6], batch_size=6)
    alone = np.concatenate([onnx.encode_text([t]) for t in ct_rate_reports[:6]])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_long_report_is_cut_with_the_same_warning(onnx_dir: Path, ct_rate_reports: list[str], caplog) -> None:  # type: ignore[no-untyped-def]
    onnx = OnnxTextEncoder(onnx_dir)
    longest = max(ct_rate_reports, key=len)
    assert onnx.count_tokens([longest])[0] > onnx.max_tokens
    with caplog.at_level(logging.WARNING, logger="ctrag.encoders.text"):
        onnx.encode_text([longest])
    assert "text cut for encoder minilm" in caplog.text


def test_encoder_without_export_path_is_refused(ct_rate_reports: list[str], tmp_path: Path) -> None:
    from testsupport.index_data import MiniLMTestEncoder

    encoder = MiniLMTestEncoder()
    assert not can_export(encoder)
    with pytest.raises(InvalidInputError, match="not a mean-pooling text encoder"):
        export_text_encoder(encoder, ct_rate_reports[:2], tmp_path)


def test_export_needs_check_reports(minilm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="at least one report"):
        export_text_encoder(minilm, ["  "], tmp_path)


def test_incomplete_folder_is_named(onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="no readable ONNX encoder manifest"):
        OnnxTextEncoder(tmp_path)
    (tmp_path / MANIFEST).write_text((onnx_dir / MANIFEST).read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(WeightsNotFoundError, match=f"{MODEL_FILE} is missing"):
        OnnxTextEncoder(tmp_path)


def test_onnx_encoder_runs_without_torch(onnx_dir: Path) -> None:
    code = (
        "import sys\n"
        "from ctrag.encoders.onnx_text import OnnxTextEncoder\n"
        f"vec = OnnxTextEncoder({str(onnx_dir)!r}).encode_text(['Bilateral pleural effusion.'])\n"
        "assert vec.shape == (1, 384)\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
