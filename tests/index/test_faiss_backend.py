"""FAISS construction on real MiniLM embeddings of CT-RATE reports: exactness of flat, recall of the approximate
kinds, per-stage progress, query-time knobs and the process-wide thread setting being restored."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.index import HNSWConfig, IndexConfig
from ctrag.index import faiss_backend as fb


@pytest.fixture(scope="module")
def vectors(all_embeddings: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(all_embeddings, dtype=np.float32)


def test_flat_index_is_exact_and_reports_insertion(vectors: np.ndarray) -> None:
    calls: list[tuple[str, int, int]] = []
    index, effective = fb.build_faiss_index(
        vectors, IndexConfig(add_batch_size=16), progress=lambda *a: calls.append(a)
    )
    assert effective == {"kind": "flat"} and index.ntotal == len(vectors)
    assert calls == [("build flat index", min(s + 16, len(vectors)), len(vectors)) for s in range(0, len(vectors), 16)]
    scores, rows = index.search(vectors[:5], 3)
    exact = vectors[:5] @ vectors.T
    np.testing.assert_allclose(scores, np.sort(exact, axis=1)[:, ::-1][:, :3], rtol=1e-5, atol=1e-5)
    assert rows[:, 0].tolist() == list(range(5))  # each report's nearest neighbour is itself


def test_hnsw_and_ivfpq_find_each_report_and_expose_their_knobs(vectors: np.ndarray) -> None:
    hnsw, eff = fb.build_faiss_index(vectors, IndexConfig(kind="hnsw", threads=1, hnsw=HNSWConfig(m=16)))
    assert eff["m"] == 16 and fb.search_params(hnsw, "hnsw") == {"ef_search": eff["ef_search"]}
    fb.set_search_params(hnsw, "hnsw", ef_search=200)
    assert fb.search_params(hnsw, "hnsw") == {"ef_search": 200}
    assert (hnsw.search(vectors, 1)[1][:, 0] == np.arange(len(vectors))).mean() > 0.95
    ivf, eff = fb.build_faiss_index(vectors, IndexConfig(kind="ivfpq", threads=1), seed=0)
    assert eff["nlist"] == 1 and eff["train_size"] == len(vectors)  # 61 vectors: one list, all of them train
    fb.set_search_params(ivf, "ivfpq", nprobe=50)
    assert fb.search_params(ivf, "ivfpq") == {"nprobe": eff["nlist"]}  # clamped to the lists that exist
    assert fb.search_params(hnsw, "flat") == {}


def test_faiss_threads_are_restored() -> None:
    import faiss

    before = faiss.omp_get_max_threads()
    with fb.faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    with fb.faiss_threads(None):
        assert faiss.omp_get_max_threads() == before
