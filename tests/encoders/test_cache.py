"""Embedding cache: hits/misses, per-encoder isolation, corruption detection, concurrent and interrupted writes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from ctrag.encoders.base import l2_normalise
from ctrag.encoders.cache import EmbeddingCache, content_key, encode_text_cached


class CountingEncoder:
    """A deterministic stand-in that records what it was asked to encode (for exact miss accounting)."""

    def __init__(self, fingerprint: str = "fake@0", dim: int = 8) -> None:
        self.fingerprint, self.dim, self.calls = fingerprint, dim, []

    def encode_text(self, texts, batch_size: int = 32):
        self.calls.append(list(texts))
        rows = [np.random.default_rng(abs(hash((self.fingerprint, t))) % 2**32).normal(size=self.dim) for t in texts]
        return l2_normalise(np.stack(rows))


def test_only_misses_are_encoded_and_order_is_kept(tmp_path):
    enc = CountingEncoder()
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        first = encode_text_cached(enc, ["a", "b", "a"], cache)
        assert enc.calls == [["a", "b"]]  # duplicates encoded once
        assert cache.stats.misses == 3 and cache.stats.hits == 0
        second = encode_text_cached(enc, ["b", "c", "a"], cache)
        assert enc.calls[-1] == ["c"]
        assert cache.stats.hits == 2
        np.testing.assert_array_equal(second[0], first[1])
        np.testing.assert_array_equal(second[2], first[0])
        np.testing.assert_array_equal(first[0], first[2])
        assert len(cache) == 3


def test_persisted_across_instances(tmp_path):
    enc = CountingEncoder()
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        v = encode_text_cached(enc, ["x", "y"], cache)
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        np.testing.assert_array_equal(encode_text_cached(enc, ["y", "x"], cache), v[::-1])
    assert len(enc.calls) == 1


def test_other_fingerprint_misses(tmp_path):
    a, b = CountingEncoder("enc@a"), CountingEncoder("enc@b")
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        va = encode_text_cached(a, ["same text"], cache)
        vb = encode_text_cached(b, ["same text"], cache)
        assert b.calls == [["same text"]]
        assert not np.allclose(va, vb)
        assert cache.fingerprints() == ["enc@a", "enc@b"] and cache.count("enc@a") == 1
        assert cache.clear("enc@a") == 1 and cache.count() == 1


def _corrupt(path: Path, sql: str, params: tuple) -> None:
    con = sqlite3.connect(path)
    con.execute(sql, params)
    con.commit()
    con.close()


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("UPDATE embeddings SET vector = ? WHERE content_sha = ?", "flipped bytes"),
        ("UPDATE embeddings SET dim = 7, vector = ? WHERE content_sha = ?", "truncated"),
        ("UPDATE embeddings SET checksum = ?, vector = vector WHERE content_sha = ?", "bad checksum"),
    ],
)
def test_corrupt_entries_are_detected_and_recomputed(tmp_path, sql, what):
    enc = CountingEncoder()
    path = tmp_path / "c.sqlite"
    with EmbeddingCache(path) as cache:
        good = encode_text_cached(enc, ["p", "q"], cache)
    key = content_key("p")
    blob = bytearray(good[0].astype("<f4").tobytes())
    if what == "flipped bytes":
        blob[5] ^= 0xFF
        param: object = bytes(blob)
    elif what == "truncated":
        param = bytes(blob[:-4])
    else:
        param = "0" * 64
    _corrupt(path, sql, (param, key))
    with EmbeddingCache(path) as cache:
        again = encode_text_cached(enc, ["p", "q"], cache)
        assert cache.stats.corrupt == 1 and enc.calls[-1] == ["p"]
        np.testing.assert_array_equal(again, good)
    with EmbeddingCache(path) as cache:  # the repaired row is valid again
        encode_text_cached(enc, ["p"], cache)
        assert cache.stats.corrupt == 0 and cache.stats.hits == 1


def test_interrupted_write_leaves_no_partial_rows(tmp_path, monkeypatch):
    path = tmp_path / "c.sqlite"
    with EmbeddingCache(path) as cache:
        encode_text_cached(CountingEncoder(), ["kept"], cache)
    cache = EmbeddingCache(path)
    real_execute = cache._conn.execute
    calls = {"n": 0}

    class Boom(RuntimeError):
        pass

    def failing_executemany(sql, rows):
        rows = list(rows)
        real_execute(sql, rows[0])  # first row written inside the transaction ...
        raise Boom("disk full")  # ... then the write dies

    monkeypatch.setattr(cache, "_conn", _Proxy(cache._conn, failing_executemany, calls))
    with pytest.raises(Boom):
        cache.put_many("fake@0", {content_key("u"): np.eye(8)[0], content_key("v"): np.eye(8)[1]})
    monkeypatch.undo()
    cache.close()
    with EmbeddingCache(path) as fresh:
        assert fresh.count() == 1  # only the row from before the failed transaction


class _Proxy:
    def __init__(self, conn, executemany, calls):
        self._conn, self._executemany, self._calls = conn, executemany, calls

    def execute(self, *args):
        return self._conn.execute(*args)

    def executemany(self, sql, rows):
        self._calls["n"] += 1
        return self._executemany(sql, rows)


def _writer(path: str, worker: int, n: int) -> None:
    enc = CountingEncoder()
    with EmbeddingCache(path) as cache:
        for i in range(n):
            encode_text_cached(enc, [f"text {i}", f"worker {worker} text {i}"], cache)


def test_concurrent_processes_share_one_cache(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 25)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    with EmbeddingCache(path) as cache:
        assert cache.count() == 25 + 3 * 25  # shared texts stored once, per-worker texts once each
        enc = CountingEncoder()
        encode_text_cached(enc, [f"text {i}" for i in range(25)], cache)
        assert enc.calls == [] and cache.stats.corrupt == 0


def test_real_encoder_roundtrip(minilm, ct_rate_reports):
    with EmbeddingCache(":memory:") as cache:
        cold = encode_text_cached(minilm, ct_rate_reports[:4], cache)
        warm = encode_text_cached(minilm, ct_rate_reports[:4], cache)
        np.testing.assert_array_equal(cold, warm)
        np.testing.assert_allclose(cold, minilm.encode_text(ct_rate_reports[:4]), atol=1e-6)
        assert cache.stats.hits == 4 and cache.count(minilm.fingerprint) == 4


def test_embed_in_chunks_reports_each_chunk_under_its_stage(tmp_path):
    from ctrag.encoders.cache import embed_in_chunks

    enc = CountingEncoder()
    enc.name = "counting"
    calls = []
    out = embed_in_chunks(
        enc, [f"t{i}" for i in range(7)], batch_size=3, progress=lambda *a: calls.append(a), stage="s"
    )
    assert out.shape == (7, 8) and calls == [("s", 3, 7), ("s", 6, 7), ("s", 7, 7)]
    assert [len(c) for c in enc.calls] == [3, 3, 1]


def test_memo_encoder_embeds_each_text_once_and_can_persist(minilm, ct_rate_reports, tmp_path):
    from ctrag.encoders.cache import MEMO_STAGE, MemoTextEncoder, memo_encoder

    texts = list(ct_rate_reports[:6])
    calls = []
    memo = memo_encoder(minilm, cache_path=tmp_path / "c.sqlite", progress=lambda *a: calls.append(a))
    assert isinstance(memo, MemoTextEncoder)
    assert (memo.name, memo.dim, memo.fingerprint) == (minilm.name, minilm.dim, minilm.fingerprint)
    first = memo.encode_text(texts[:4])
    both = memo.encode_text(texts + texts[:2])
    assert calls[-1] == (MEMO_STAGE, 2, 2) and [c[2] for c in calls] == [4, 2]  # only new texts were embedded
    np.testing.assert_array_equal(both[:4], first)
    np.testing.assert_allclose(both[:6], minilm.encode_text(texts), atol=1e-5)
    with EmbeddingCache(tmp_path / "c.sqlite") as cache:
        assert cache.count(minilm.fingerprint) == 6
    assert memo.encode_text([]).shape == (0, minilm.dim)
    with pytest.raises(NotImplementedError):
        memo.encode_volume(None)


def test_memo_encoder_is_a_text_only_encoder(minilm):
    from ctrag.encoders.cache import memo_encoder

    memo = memo_encoder(minilm)
    assert memo.supports_text and not memo.supports_volume


def test_a_corpus_embedded_in_chunks_gets_one_truncation_warning(minilm, ct_rate_reports, caplog):
    """Chunked embedding (ctrag index) sums what truncate mode cut into one line instead of one per chunk."""
    from ctrag.encoders.cache import embed_in_chunks

    texts = list(ct_rate_reports[:24])
    counts = minilm.count_tokens(texts)
    limit = minilm.max_tokens
    cut = sum(n > limit for n in counts)
    assert cut > 1
    with caplog.at_level("WARNING", logger="ctrag.encoders.text"):
        emb = embed_in_chunks(minilm, texts, batch_size=8)
    assert emb.shape == (24, 384)
    assert len(caplog.records) == 1
    assert f"{cut} of 24 texts" in caplog.text
    assert f"{sum(n - limit for n in counts if n > limit)} token(s) dropped" in caplog.text


def test_memo_encoder_bound_evicts_the_least_recently_used_text(minilm):
    from ctrag.encoders.cache import memo_encoder
    from ctrag.errors import InvalidInputError

    memo = memo_encoder(minilm, max_items=2)
    memo.encode_text(["a lung nodule", "pleural effusion"])
    memo.encode_text(["a lung nodule"])  # used again: "pleural effusion" is now the oldest
    memo.encode_text(["cardiomegaly"])
    assert list(memo._memo) == ["a lung nodule", "cardiomegaly"]
    with pytest.raises(InvalidInputError, match="max_items"):
        memo_encoder(minilm, max_items=0)
