"""Static token-embedding encoder distilled from the packaged MiniLM, on the shipped CT-RATE reports.

Embedding all 30,522 vocabulary tokens through MiniLM takes about a minute on 2 cores, so most tests distil with
MiniLM's real *input* word-embedding matrix standing in for the token table (same shape, real weights, instant).
What they check (train-only weights, pooling over the whole report, fingerprints, no torch) does not depend on
which table is used; ``source_token_vectors`` itself is checked against MiniLM on real single-token texts.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctrag.data.case import Case, Corpus
from ctrag.data.ct_rate import read_ctclip_classifier
from ctrag.encoders import create_encoder
from ctrag.encoders.static_text import (
    MANIFEST,
    TABLE_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    StaticDistillConfig,
    StaticTextEncoder,
    distill_static_encoder,
    source_token_vectors,
)
from ctrag.errors import IncompatibleIndexError, InvalidInputError, WeightsNotFoundError

CT_RATE = Path(__file__).resolve().parents[2] / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier"
FAST = StaticDistillConfig(pca_dims=None)  # PCA is exercised once (the session folder); the rest skip it


@pytest.fixture(scope="session")
def report_cases() -> list[Case]:
    """The shipped CT-RATE reports (800 train, 100 val) as cases."""
    return read_ctclip_classifier(CT_RATE, patient_level_split=False)


@pytest.fixture(scope="session")
def stand_in_table(minilm) -> np.ndarray:  # type: ignore[no-untyped-def]
    return minilm.model.network.embeddings.word_embeddings.weight.detach().numpy().copy()


@pytest.fixture(scope="session")
def static_dir(tmp_path_factory, report_cases, minilm, stand_in_table) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("static") / "minilm-static"
    return distill_static_encoder(report_cases, out, source=minilm, token_vectors=stand_in_table)


@pytest.fixture(scope="session")
def static(static_dir: Path) -> StaticTextEncoder:
    return StaticTextEncoder(static_dir)


def _long_train_report(report_cases: list[Case], encoder: StaticTextEncoder) -> str:
    texts = [c.report_text for c in report_cases if c.split == "train"]
    counts = encoder.count_tokens(texts)
    return next(t for t, n in zip(texts, counts, strict=True) if n > 400)


def test_token_vectors_are_minilm_on_the_token_alone(minilm) -> None:  # type: ignore[no-untyped-def]
    words = ["lung", "liver", "heart", "chest", "mass"]  # whole-word tokens of MiniLM's vocabulary
    ids = minilm.model.tokenizer.convert_tokens_to_ids(words)
    assert minilm.model.tokenizer.unk_token_id not in ids
    vectors = source_token_vectors(minilm, token_ids=ids)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    reference = minilm.encode_text(words)  # "[CLS] word [SEP]" for whole-word tokens
    assert np.min(np.sum(vectors * reference, axis=1)) > 0.9999


def test_folder_holds_table_weights_tokenizer_and_manifest(static_dir: Path, static: StaticTextEncoder) -> None:
    assert {p.name for p in static_dir.iterdir()} == {TABLE_FILE, WEIGHTS_FILE, TOKENIZER_FILE, MANIFEST}
    manifest = json.loads((static_dir / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["weights_counted_on"] == {"split": "train", "reports": 800}
    assert manifest["source"]["fingerprint"].startswith("minilm@")
    assert manifest["settings"] == {"pca_dims": 256, "sif_a": 1e-3, "normalise_tokens": True}
    assert static.dim == 256 and 0.5 < manifest["pca"]["explained_variance"] < 1.0
    assert not list(static_dir.parent.glob(".*tmp"))  # no staging folder left behind


def test_frequent_tokens_weigh_less(static: StaticTextEncoder, minilm) -> None:  # type: ignore[no-untyped-def]
    weights = np.load(static.folder / WEIGHTS_FILE)
    the, mass, unseen = minilm.model.tokenizer.convert_tokens_to_ids(["the", "mass", "[unused5]"])
    assert weights[the] < weights[mass] < weights[unseen] == pytest.approx(1.0)


def test_refuses_a_corpus_without_train_reports(report_cases, minilm, stand_in_table, tmp_path) -> None:  # type: ignore[no-untyped-def]
    val_only = [c for c in report_cases if c.split == "val"]
    with pytest.raises(InvalidInputError, match=r"needs train reports and found none .*'val': 100"):
        distill_static_encoder(val_only, tmp_path / "out", source=minilm, token_vectors=stand_in_table)
    assert not (tmp_path / "out").exists()


def test_weights_never_see_val_reports(report_cases, minilm, stand_in_table, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def distil(cases: list[Case], name: str) -> StaticTextEncoder:
        folder = distill_static_encoder(
            cases, tmp_path / name, source=minilm, config=FAST, token_vectors=stand_in_table
        )
        return StaticTextEncoder(folder)

    def rewrite(case: Case) -> Case:
        return dataclasses.replace(case, report_findings="Nodule nodule nodule in the liver.", report_impression="")

    base = distil(report_cases, "base")
    val_changed = distil([rewrite(c) if c.split == "val" else c for c in report_cases], "val-changed")
    first_train = next(i for i, c in enumerate(report_cases) if c.split == "train")
    train_changed = distil([rewrite(c) if i == first_train else c for i, c in enumerate(report_cases)], "train")
    w_base = np.load(base.folder / WEIGHTS_FILE)
    assert np.array_equal(w_base, np.load(val_changed.folder / WEIGHTS_FILE))
    assert base.fingerprint == val_changed.fingerprint
    assert not np.array_equal(w_base, np.load(train_changed.folder / WEIGHTS_FILE))  # the check can fail
    assert base.fingerprint != train_changed.fingerprint


def test_vectors_normalised_deterministic_and_batch_invariant(
    static_dir: Path, static: StaticTextEncoder, report_cases
) -> None:  # type: ignore[no-untyped-def]
    texts = [c.report_text for c in report_cases[:40]]
    full = static.encode_text(texts)
    assert full.dtype == np.float32 and full.shape == (40, 256)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(full, StaticTextEncoder(static_dir).encode_text(texts))  # a fresh load: same bits
    np.testing.assert_allclose(static.encode_text(texts, batch_size=1), full, atol=1e-6, rtol=0)
    np.testing.assert_allclose(static.encode_text(texts[::-1], batch_size=7)[::-1], full, atol=1e-6, rtol=0)
    with pytest.raises(InvalidInputError, match="empty"):
        static.encode_text(["   "])
    assert static.count_tokens(["No mass."]) == [3]  # the saved tokenizer's padding to 128 tokens is off
    with pytest.raises(InvalidInputError, match="text #1 holds no tokens"):
        static.encode_text([texts[0], "\x00\x01"])


def test_a_long_report_is_read_whole(static: StaticTextEncoder, minilm, report_cases) -> None:  # type: ignore[no-untyped-def]
    report = _long_train_report(report_cases, static)
    head, sep, _last = report.rstrip().rstrip(".").rpartition(". ")
    edited = f"{head}{sep}Large right pleural effusion with a spiculated mass in the left upper lobe."
    assert edited != report and minilm.count_tokens([report])[0] > minilm.max_tokens
    a, b = static.encode_text([report, edited])
    assert float(a @ b) < 1 - 1e-4  # the static encoder sees the last sentence ...
    ma, mb = minilm.encode_text([report, edited])
    np.testing.assert_allclose(ma, mb, atol=1e-6)  # ... MiniLM's 256-token window does not


def test_fingerprint_covers_the_table(static_dir: Path, static: StaticTextEncoder, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in static_dir.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    assert StaticTextEncoder(copy).fingerprint == static.fingerprint  # contents, not paths
    table = np.load(copy / TABLE_FILE)
    table[100, 0] += 1e-3
    np.save(copy / TABLE_FILE, table)
    assert StaticTextEncoder(copy).fingerprint != static.fingerprint
    assert static.fingerprint.startswith("minilm-static@")


def test_index_refuses_the_other_encoder(static: StaticTextEncoder, minilm, report_cases) -> None:  # type: ignore[no-untyped-def]
    from ctrag.index import build_index
    from ctrag.retrieval.retriever import Retriever

    cases = [c for c in report_cases if c.split == "train"][:12]
    static_index = build_index(cases, static, scorer="dense").index
    minilm_index = build_index(cases, minilm, scorer="dense").index
    assert static_index.encoder_fingerprint == static.fingerprint
    Retriever(static_index, static)  # its own encoder is accepted
    with pytest.raises(IncompatibleIndexError, match="fingerprint"):
        Retriever(static_index, minilm)
    with pytest.raises(IncompatibleIndexError, match="fingerprint"):
        Retriever(minilm_index, static)


def test_factory_builds_it_without_torch(static_dir: Path) -> None:
    script = (
        "import sys\n"
        "from ctrag.encoders import create_encoder\n"
        f"a = create_encoder('minilm-static', weights={str(static_dir)!r})\n"
        f"b = create_encoder({str(static_dir)!r})\n"  # a plain folder is recognised by its manifest
        "v = a.encode_text(['No pleural effusion. Nodule in the right lower lobe.'])\n"
        "assert a.fingerprint == b.fingerprint and v.shape == (1, 256)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnxruntime')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_factory_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="distill-static"):
        create_encoder("minilm-static")
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_encoder("minilm-static", weights=tmp_path / "missing")
    with pytest.raises(WeightsNotFoundError, match="manifest"):
        create_encoder("minilm-static", weights=tmp_path)


def test_cli_writes_the_folder_and_refuses_bad_corpora(  # type: ignore[no-untyped-def]
    report_cases, stand_in_table, tmp_path, monkeypatch, capsys
) -> None:
    import ctrag.encoders.static_text as static_text
    from ctrag.cli import main

    monkeypatch.setattr(static_text, "source_token_vectors", lambda *a, **k: stand_in_table.copy())
    corpus = tmp_path / "corpus"
    Corpus(report_cases[:60] + [c for c in report_cases if c.split == "val"][:5]).save(corpus)
    out = tmp_path / "encoder"
    assert main(["encoders", "distill-static", "--corpus", str(corpus), "--out", str(out), "--no-progress",
                 "--pca-dims", "0"]) == 0  # fmt: skip
    assert json.loads((out / MANIFEST).read_text())["weights_counted_on"]["reports"] == 60
    assert "static encoder written" in capsys.readouterr().out

    assert main(["encoders", "distill-static", "--corpus", str(tmp_path / "nowhere"), "--out", str(out)]) != 0
    assert "no corpus manifest" in capsys.readouterr().err
    val_corpus = tmp_path / "val-corpus"
    Corpus([c for c in report_cases if c.split == "val"][:5]).save(val_corpus)
    assert main(["encoders", "distill-static", "--corpus", str(val_corpus), "--out", str(tmp_path / "x")]) != 0
    assert "needs train reports" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_saved_static_index_answers_text_queries_without_torch(  # type: ignore[no-untyped-def]
    static_dir: Path, static: StaticTextEncoder, report_cases, tmp_path: Path
) -> None:
    from ctrag.index import build_index

    cases = [c for c in report_cases if c.split == "train"][:30]
    spec = {"name_or_path": "minilm-static", "weights": str(static_dir)}
    build_index(cases, static, scorer="dense", encoder_spec=spec).index.save(tmp_path / "index")
    query = cases[7].report_text
    script = (
        "import sys\n"
        "from ctrag.retrieval.retriever import Retriever\n"
        f"r = Retriever.from_dir({str(tmp_path / 'index')!r}, scorer='dense')\n"
        f"hits = r.search({query!r}, k=3)\n"
        "print(hits[0].case_id, r.encoder.fingerprint, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [cases[7].case_id, static.fingerprint, "False"]
