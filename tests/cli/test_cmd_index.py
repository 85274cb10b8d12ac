"""``ctrag index`` end to end, in-process through ``ctrag.cli.main``, on real CT-RATE reports and real CTs with
masks: index kinds, splits, the hybrid scorer, the embedding cache, malformed manifests. Most runs use the MiniLM
test adapter (loaded once); one runs the real encoder factory. The corpus and index fixtures are in conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testsupport import index_data as support

from ctrag.cli import _shared, main
from ctrag.data.case import Corpus
from ctrag.index import CaseIndex
from tests.cli.conftest import EFFUSION, search_json

REAL_CREATE_ENCODER = _shared.load_encoder


def test_index_writes_a_train_only_index(index_dir: Path, test_encoder: Any) -> None:
    meta = CaseIndex.read_metadata(index_dir)
    assert meta["splits"] == ["train"] and meta["count"] == 19 and meta["kind"] == "flat"
    assert meta["encoder"]["fingerprint"] == test_encoder.fingerprint
    assert meta["encoder"]["spec"] == {"name_or_path": "minilm", "weights": None}
    assert meta["components"] == {}


def test_index_kind_and_splits_options(
    corpus_dir: Path, patched: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hnsw"
    args = ["index", str(corpus_dir), "--out", str(out), "--kind", "hnsw", "--splits", "train,val"]
    assert main([*args, "--scorer", "dense", "--no-progress"]) == 0
    meta = CaseIndex.read_metadata(out)
    assert meta["kind"] == "hnsw" and meta["splits"] == ["train", "val"] and meta["count"] == 22
    val_hits = search_json(capsys, EFFUSION, "--index", str(out), "--split", "val")["hits"]
    assert len(val_hits) == 3 and {h["split"] for h in val_hits} == {"val"}


def test_on_disk_ivfpq_index_is_searched_with_clean_json(
    corpus_dir: Path, patched: None, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`--kind ivfpq --on-disk` writes memory-mapped lists; FAISS's C-level messages stay out of the stdout JSON."""
    capsys = capfd  # file-descriptor capture: FAISS prints from C++, which sys.stdout capture would not see
    out = tmp_path / "ondisk"
    args = ["index", str(corpus_dir), "--out", str(out), "--kind", "ivfpq", "--on-disk", "--splits", "train,val"]
    assert main([*args, "--scorer", "dense", "--no-progress"]) == 0
    meta = CaseIndex.read_metadata(out)
    assert meta["kind"] == "ivfpq" and meta["effective"]["on_disk"] is True and "index.ivfdata" in meta["files"]
    hits = search_json(capsys, EFFUSION, "--index", str(out), "--k", "3")["hits"]  # parses stdout as JSON
    assert len(hits) == 3 and all(h["split"] == "train" for h in hits)
    assert main(["index", str(corpus_dir), "--out", str(tmp_path / "bad"), "--on-disk", "--no-progress"]) == 2
    assert "--on-disk applies to --kind ivfpq" in capsys.readouterr().err


def test_hybrid_scorer_component(
    corpus_dir: Path, patched: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--scorer hybrid` fits ctrag.retrieval.hybrid on the indexed cases, stores it, and search uses it."""
    out = tmp_path / "hybrid"
    assert main(["index", str(corpus_dir), "--out", str(out), "--scorer", "hybrid", "--no-progress"]) == 0
    meta = CaseIndex.read_metadata(out)
    assert meta["components"] == {"hybrid": "hybrid/"}
    payload = search_json(capsys, EFFUSION, "--index", str(out), "--k", "3")
    assert payload["scorer"] == "hybrid" and all(h["scorer"] == "hybrid" for h in payload["hits"])
    dense = search_json(capsys, EFFUSION, "--index", str(out), "--k", "3", "--scorer", "dense")
    assert dense["scorer"] == "dense"
    assert [h["score"] for h in dense["hits"]] == [h["dense_score"] for h in dense["hits"]]
    assert [h["score"] for h in payload["hits"]] != [h["dense_score"] for h in payload["hits"]]


def test_missing_index_and_corpus(tmp_path: Path, patched: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", EFFUSION, "--index", str(tmp_path / "none")]) == 2
    assert "no index at" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "no-corpus"), "--out", str(tmp_path / "i"), "--scorer", "dense"]) == 2
    assert "no corpus manifest" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"case_id": "a"}', "field(s) ['patient_id', 'split'] missing or not text"),
        ("[1, 2]", "a case record must be a JSON object, got list"),
        ('{"case_id": "a", "patient_id": "p", "split": "train", "spacing": "thin"}', "case a: malformed field"),
        ('{"case_id": "a", "patient_id": "p", "split": "training"}', "split must be one of"),
    ],
)
def test_index_refuses_a_malformed_manifest_naming_the_line(
    tmp_path: Path, patched: None, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    """Hand-edited manifests used to end in a TypeError traceback from Case(**record)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = Corpus(support.read_ct_rate("train", 1)).save(corpus).read_text(encoding="utf-8")
    (corpus / "manifest.jsonl").write_text(good + line + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["index", str(corpus), "--out", str(tmp_path / "i"), "--scorer", "dense", "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: {corpus / 'manifest.jsonl'}:2:") and message in err


def test_real_encoder_factory_end_to_end_and_refusal(
    real_index_dir: Path,
    index_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No adapter: `--encoder minilm` goes through ctrag.encoders.factory for both commands."""
    monkeypatch.setattr(_shared, "load_encoder", REAL_CREATE_ENCODER)
    out = real_index_dir
    meta = CaseIndex.read_metadata(out)
    assert meta["encoder"]["name"] == "minilm" and meta["count"] == 6
    assert "text_encoder_onnx" in meta["components"]  # the query encoder for torch-free searches
    hits = search_json(capsys, EFFUSION, "--index", str(out), "--k", "2")["hits"]
    assert len(hits) == 2 and hits[0]["score"] > 0
    # a real CT-RATE report is longer than MiniLM's 256-token window: the search says how much it cut
    # (caplog is cleared first: it holds the whole test's records, and the index build warned for its own texts)
    long_report = max((c.report_text for c in support.read_ct_rate("val", 20)), key=len)
    caplog.clear()
    with caplog.at_level("WARNING", logger="ctrag.encoders.text"):
        assert search_json(capsys, long_report, "--index", str(out), "--k", "2")["hits"]
    assert "text cut for encoder minilm" in caplog.text and "token(s) dropped" in caplog.text
    # `index_dir` was built by the test adapter: the real MiniLM has another fingerprint, so search refuses.
    capsys.readouterr()
    assert main(["search", EFFUSION, "--index", str(index_dir)]) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "fingerprint" in err and meta["encoder"]["fingerprint"] in err


def test_index_with_embedding_cache_reuses_vectors(
    corpus_dir: Path, patched: None, test_encoder: Any, tmp_path: Path
) -> None:
    from ctrag.encoders.cache import EmbeddingCache

    cache = tmp_path / "emb.sqlite"
    first, second = tmp_path / "a", tmp_path / "b"
    args = ["index", str(corpus_dir), "--scorer", "dense", "--no-progress", "--cache", str(cache)]
    assert main([*args, "--out", str(first)]) == 0
    stored = EmbeddingCache(cache).count()
    assert stored == CaseIndex.read_metadata(first)["count"]  # every indexed report is cached once
    assert main([*args, "--out", str(second)]) == 0
    assert EmbeddingCache(cache).count() == stored
    np.testing.assert_array_equal(CaseIndex.load(first).vectors, CaseIndex.load(second).vectors)


def test_engine_ray_builds_the_local_index_and_a_rerun_reuses_its_shards(
    corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--engine ray` starts a local 2-worker cluster; workers rebuild the (LSA test) encoder from its spec."""
    from testsupport.ray_encoders import LsaBuilder, TaggedLsa, worker_env

    from ctrag.index import ray_embed

    fit = tuple(c.report_text for c in Corpus.load(corpus_dir) if c.has_report)
    monkeypatch.setattr(_shared, "load_encoder", lambda name, weights, device: TaggedLsa(fit, dim=16))
    monkeypatch.setattr(ray_embed, "EncoderSpec", lambda name, weights, device: LsaBuilder(fit, dim=16))
    for key, value in worker_env().items():
        monkeypatch.setenv(key, value)
    base = ["index", str(corpus_dir), "--scorer", "dense", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "local")]) == 0
    ray_args = [*base, "--out", str(tmp_path / "ray"), "--engine", "ray", "--shard-size", "8", "--batch-size", "8"]
    capsys.readouterr()
    assert main(ray_args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ray: 3 shard(s) embedded on 2 worker(s), 0 reused (of 3)" in out
    assert len(list((tmp_path / "ray.work" / "shards").glob("shard-*.json"))) == 3
    local, remote = CaseIndex.load(tmp_path / "local"), CaseIndex.load(tmp_path / "ray")
    assert remote.case_ids == local.case_ids
    np.testing.assert_allclose(remote.vectors, local.vectors, rtol=0, atol=1e-5)
    assert main(ray_args) == 0
    assert "ray: 0 shard(s) embedded on 0 worker(s), 3 reused (of 3)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--engine", "spark"], "--engine must be one of ['local', 'ray'], got 'spark'"),
        (["--workers", "2"], "--workers apply to --engine ray only"),
        (["--engine", "ray", "--cache", "{tmp}/c.sqlite"], "--cache works with --engine local"),
        (["--engine", "ray", "--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    ],
)
def test_engine_options_fail_with_a_message(
    corpus_dir: Path, patched: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    capsys.readouterr()
    extra = [a.format(tmp=tmp_path) for a in extra]
    args = ["index", str(corpus_dir), "--out", str(tmp_path / "i"), "--scorer", "dense", "--no-progress", *extra]
    assert main(args) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before anything is written
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err
