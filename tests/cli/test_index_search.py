"""``ctrag index`` / ``ctrag search`` end to end, in-process through ``ctrag.cli.main``, on real CT-RATE reports
and real CTs with masks. Most runs use the MiniLM test adapter (loaded once); one runs the real encoder factory."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from testsupport import index_data as support

from ctrag.cli import _shared, main
from ctrag.data.case import Corpus
from ctrag.index import CaseIndex

SAMPLE_CT = Path(__file__).resolve().parents[2] / "sample_data" / "ct"
EFFUSION = "Bilateral pleural effusion with passive atelectasis in both lower lobes."


REAL_CREATE_ENCODER = _shared.load_encoder


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def patched(test_encoder: Any) -> Iterator[None]:
    """Route the CLI's encoder factory to the session MiniLM adapter (the real factory is tested separately)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_shared, "load_encoder", lambda name, weights, device: test_encoder)
        yield


@pytest.fixture(scope="module")
def index_dir(corpus_dir: Path, patched: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("index") / "idx"
    assert main(["index", str(corpus_dir), "--out", str(out), "--scorer", "dense", "--no-progress"]) == 0
    return out


def _search_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["search", *args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def test_index_writes_a_train_only_index(index_dir: Path, test_encoder: Any) -> None:
    meta = CaseIndex.read_metadata(index_dir)
    assert meta["splits"] == ["train"] and meta["count"] == 19 and meta["kind"] == "flat"
    assert meta["encoder"]["fingerprint"] == test_encoder.fingerprint
    assert meta["encoder"]["spec"] == {"name_or_path": "minilm", "weights": None}
    assert meta["components"] == {}


def test_search_json_matches_the_library(
    index_dir: Path, patched: None, capsys: pytest.CaptureFixture[str], test_encoder: Any
) -> None:
    from ctrag.retrieval.retriever import Retriever

    payload = _search_json(capsys, EFFUSION, "--index", str(index_dir), "--k", "3")
    hits = payload["hits"]
    assert [h["rank"] for h in hits] == [0, 1, 2] and payload["strategy"] == "nearest"
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert all(h["split"] == "train" and h["report_text"] for h in hits)
    expected = Retriever.from_dir(index_dir, test_encoder).search(EFFUSION, k=3)
    assert [h["case_id"] for h in hits] == [h.case_id for h in expected]
    assert "Pleural effusion" in hits[0]["labels"]


def test_search_filters_strategies_and_report_file(
    corpus_dir: Path, index_dir: Path, patched: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    payload = _search_json(capsys, EFFUSION, "--index", str(index_dir), "--has-mask")
    masked = payload["hits"]
    assert {h["case_id"] for h in masked} == {"ts_example_sm", "ts_chest_crop"}
    # paths are printed relative to the corpus the index was built from, like the manifest stores them
    assert payload["corpus"] == str(corpus_dir.resolve())
    assert not any(Path(h["mask_path"]).is_absolute() or Path(h["volume_path"]).is_absolute() for h in masked)
    assert all((corpus_dir / h["mask_path"]).is_file() and (corpus_dir / h["volume_path"]).is_file() for h in masked)
    with_ct = _search_json(capsys, EFFUSION, "--index", str(index_dir), "--has-volume", "--k", "10")["hits"]
    assert {h["case_id"] for h in with_ct} == {"ts_example_sm", "ts_chest_crop"}  # the only cases with a CT here
    labelled = _search_json(capsys, EFFUSION, "--index", str(index_dir), "--label", "Pleural effusion")["hits"]
    assert labelled and all("Pleural effusion" in h["labels"] for h in labelled)

    far = _search_json(capsys, EFFUSION, "--index", str(index_dir), "--strategy", "farthest", "--k", "4")["hits"]
    assert [h["score"] for h in far] == sorted(h["score"] for h in far)
    rand = [
        [
            h["case_id"]
            for h in _search_json(capsys, EFFUSION, "-i", str(index_dir), "--strategy", "random", "--seed", "5")["hits"]
        ]
        for _ in range(2)
    ]
    assert rand[0] == rand[1] and len(set(rand[0])) == 5
    query = support.read_ct_rate("train", 0, ("train_175",))[0].report_text
    mmr = _search_json(capsys, query, "-i", str(index_dir), "--strategy", "mmr", "--k", "3")["hits"]
    near = _search_json(capsys, query, "-i", str(index_dir), "--k", "3")["hits"]
    assert [h["case_id"] for h in near[:2]] == ["train_175", "train_742"]
    assert len({h["patient_id"] for h in mmr}) == 3

    report = tmp_path / "query.txt"
    report.write_text(EFFUSION + "\n", encoding="utf-8")
    from_file = _search_json(capsys, "--index", str(index_dir), "--report-file", str(report), "--k", "3")["hits"]
    inline = _search_json(capsys, EFFUSION, "--index", str(index_dir), "--k", "3")["hits"]
    assert [h["case_id"] for h in from_file] == [h["case_id"] for h in inline]


def test_search_prints_a_table(
    index_dir: Path, patched: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctrag.cli import _app

    monkeypatch.setattr(_app.console, "width", 400)  # wide enough that no path is folded over lines
    capsys.readouterr()
    assert main(["search", EFFUSION, "--index", str(index_dir), "--has-mask"]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and "ts_example_sm" in out and "ts_chest_crop" in out and "mask" in out
    # mask paths relative to the corpus folder (here a temporary folder, so they climb out of it), never absolute
    assert f" {SAMPLE_CT}" not in out
    assert re.search(r"│ (\.\./)+\S*/sample_data/ct/lowres/ts_example_ct_sm_3mm_seg_total\.nii\.gz", out)


def test_index_kind_and_splits_options(
    corpus_dir: Path, patched: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hnsw"
    args = ["index", str(corpus_dir), "--out", str(out), "--kind", "hnsw", "--splits", "train,val"]
    assert main([*args, "--scorer", "dense", "--no-progress"]) == 0
    meta = CaseIndex.read_metadata(out)
    assert meta["kind"] == "hnsw" and meta["splits"] == ["train", "val"] and meta["count"] == 22
    val_hits = _search_json(capsys, EFFUSION, "--index", str(out), "--split", "val")["hits"]
    assert len(val_hits) == 3 and {h["split"] for h in val_hits} == {"val"}


def test_hybrid_scorer_component(
    corpus_dir: Path, patched: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--scorer hybrid` fits ctrag.retrieval.hybrid on the indexed cases, stores it, and search uses it."""
    out = tmp_path / "hybrid"
    assert main(["index", str(corpus_dir), "--out", str(out), "--scorer", "hybrid", "--no-progress"]) == 0
    meta = CaseIndex.read_metadata(out)
    assert meta["components"] == {"hybrid": "hybrid/"}
    payload = _search_json(capsys, EFFUSION, "--index", str(out), "--k", "3")
    assert payload["scorer"] == "hybrid" and all(h["scorer"] == "hybrid" for h in payload["hits"])
    dense = _search_json(capsys, EFFUSION, "--index", str(out), "--k", "3", "--scorer", "dense")
    assert dense["scorer"] == "dense"
    assert [h["score"] for h in dense["hits"]] == [h["dense_score"] for h in dense["hits"]]
    assert [h["score"] for h in payload["hits"]] != [h["dense_score"] for h in payload["hits"]]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["   "], 2, "empty query"),
        ([EFFUSION, "--report-file", "x.txt"], 2, "not both"),
        (["--report-file", "/nonexistent/q.txt"], 2, "does not exist"),
        ([EFFUSION, "--strategy", "closest"], 2, "known strategies"),
        ([EFFUSION, "--label", "Pneumonia"], 2, "unknown label"),
        ([EFFUSION, "--k", "0"], 2, "k must be a positive integer"),
    ],
)
def test_search_errors(
    index_dir: Path, patched: None, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    capsys.readouterr()
    assert main(["search", *args, "--index", str(index_dir)]) == code
    assert message in " ".join(capsys.readouterr().err.split())


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
    corpus_dir: Path,
    index_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No adapter: `--encoder minilm` goes through ctrag.encoders.factory for both commands."""
    monkeypatch.setattr(_shared, "load_encoder", REAL_CREATE_ENCODER)
    small = tmp_path / "small"
    Corpus(Corpus.load(corpus_dir).split("train")[:6]).save(small)
    out = tmp_path / "real"
    assert (
        main(["index", str(small), "--out", str(out), "--encoder", "minilm", "--scorer", "dense", "--no-progress"]) == 0
    )
    meta = CaseIndex.read_metadata(out)
    assert meta["encoder"]["name"] == "minilm" and meta["count"] == 6
    hits = _search_json(capsys, EFFUSION, "--index", str(out), "--k", "2")["hits"]
    assert len(hits) == 2 and hits[0]["score"] > 0
    # a real CT-RATE report is longer than MiniLM's 256-token window: the search says how much it cut
    long_report = support.read_ct_rate("train", 0, ("train_175",))[0].report_text
    with caplog.at_level("WARNING", logger="ctrag.encoders.text"):
        assert _search_json(capsys, long_report, "--index", str(out), "--k", "2")["hits"]
    assert "text cut for encoder minilm" in caplog.text and "token(s) dropped" in caplog.text
    # `index_dir` was built by the test adapter: the real MiniLM has another fingerprint, so search refuses.
    capsys.readouterr()
    assert main(["search", EFFUSION, "--index", str(index_dir)]) == 3
    err = " ".join(capsys.readouterr().err.split())
    assert "fingerprint" in err and meta["encoder"]["fingerprint"] in err


def test_search_with_a_held_out_corpus_case(
    corpus_dir: Path, index_dir: Path, patched: None, capsys: pytest.CaptureFixture[str]
) -> None:
    val = Corpus.load(corpus_dir).split("val")[0]
    payload = _search_json(capsys, "--query-case", val.case_id, "--corpus", str(corpus_dir), "-i", str(index_dir))
    assert payload["query"] == val.report_text and payload["query_case"] == val.case_id
    assert payload["hits"] and all(h["split"] == "train" for h in payload["hits"])
    capsys.readouterr()
    assert main(["search", "--query-case", val.case_id, "--corpus", str(corpus_dir), "-i", str(index_dir)]) == 0
    assert "label Jaccard" in capsys.readouterr().out


def test_search_refuses_a_query_case_inside_the_index(
    corpus_dir: Path, index_dir: Path, patched: None, capsys: pytest.CaptureFixture[str]
) -> None:
    train = Corpus.load(corpus_dir).split("train")[0]
    code = main(["search", "--query-case", train.case_id, "--corpus", str(corpus_dir), "-i", str(index_dir)])
    assert code == 4 and "refusing to evaluate" in capsys.readouterr().err
    code = main(["search", "--query-case", "nope", "--corpus", str(corpus_dir), "-i", str(index_dir)])
    assert code == 2 and "no case 'nope'" in capsys.readouterr().err


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
