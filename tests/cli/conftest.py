"""Fixtures of the CLI tests, one test file per command module (``cli/cmd_x.py`` -> ``tests/cli/test_cmd_x.py``).

The expensive session fixtures (the trained tiny generator run, its index, the classical masks of the shipped
CTs) are registered once in the root ``tests/conftest.py`` and shared with tests/generation and tests/segment;
the cheap encoder fixtures are imported from tests/encoders. What only the CLI tests need is defined here: a
corpus of real CT-RATE reports and CTs with masks, and the index ``ctrag index`` builds from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testsupport import index_data as support
from testsupport.generation_data import _threads  # noqa: F401  one torch thread, as for tests/generation

from ctrag.cli import _shared, main
from ctrag.data.case import Case, Corpus
from tests.encoders.conftest import ct_cases, tiny_tower_json  # noqa: F401  cheap session fixtures
from tests.labels.conftest import extractor  # noqa: F401  the fitted label extractor (session)

REAL_LOAD_ENCODER = _shared.load_encoder
EFFUSION = "Bilateral pleural effusion with passive atelectasis in both lower lobes."


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """17 train + 3 val CT-RATE reports and two real CTs with masks, as a manifest like `ctrag ingest` writes."""
    cases = (
        support.read_ct_rate("train", 15, ("train_175", "train_742"))
        + support.ct_cases_with_masks()
        + support.read_ct_rate("val", 3)
    )
    folder = tmp_path_factory.mktemp("corpus")
    Corpus(cases).save(folder)
    return folder


def _patch_encoder(mp: pytest.MonkeyPatch, encoder: Any) -> None:
    mp.setattr(_shared, "load_encoder", lambda name, weights, device: encoder)


@pytest.fixture(scope="module")
def patched(test_encoder: Any) -> Iterator[None]:
    """Route the CLI's encoder factory to the session MiniLM adapter (the real factory is tested separately)."""
    with pytest.MonkeyPatch.context() as mp:
        _patch_encoder(mp, test_encoder)
        yield


@pytest.fixture(scope="session")
def index_dir(corpus_dir: Path, test_encoder: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The index `ctrag index` builds over ``corpus_dir`` with the test adapter (shared by index and search tests)."""
    out = tmp_path_factory.mktemp("index") / "idx"
    with pytest.MonkeyPatch.context() as mp:
        _patch_encoder(mp, test_encoder)
        assert main(["index", str(corpus_dir), "--out", str(out), "--scorer", "dense", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def real_index_dir(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ctrag index --encoder minilm` through the real encoder factory over 6 real train reports: the index then
    stores the ONNX export of the packaged MiniLM (``text_encoder_onnx/``)."""
    small = tmp_path_factory.mktemp("real_corpus")
    Corpus(Corpus.load(corpus_dir).split("train")[:6]).save(small)
    out = tmp_path_factory.mktemp("real_index") / "real"
    args = ["index", str(small), "--out", str(out), "--encoder", "minilm", "--scorer", "dense", "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:  # whatever adapter a module has patched in, use the real factory
        mp.setattr(_shared, "load_encoder", REAL_LOAD_ENCODER)
        assert main(args) == 0
    return out


def search_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """Run `ctrag search ... --json` in-process and return its parsed output."""
    capsys.readouterr()
    code = main(["search", *args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.fixture()
def ct_corpus_dir(tmp_path: Path, sample_dir: Path) -> Path:
    """Three real CTs (two train, one test) without reports: the corpus `ctrag train classifier` trains on."""
    ct = sample_dir / "ct"
    cases = [
        Case("A0001", "Lung_Dx-A0001", "train", volume_path=str(ct / "lowres/lung_pet_ct_dx_A0001_ct_128.nii.gz")),
        Case("ts_sm", "ts_example", "train", volume_path=str(ct / "lowres/ts_example_ct_sm_3mm.nii.gz")),
        Case(
            "lidc",
            "LIDC-IDRI-0314",
            "test",
            report_findings="Single right lung lesion.",
            report_source="annotation-derived",
            volume_path=str(ct / "extra/lidc_idri_0314_ct_lowres.nii.gz"),
        ),
    ]
    Corpus(cases).save(tmp_path / "corpus")
    return tmp_path / "corpus"
