"""FAISS construction on real MiniLM embeddings of CT-RATE reports: exactness of flat, recall of the approximate
kinds, per-stage progress, query-time knobs and the process-wide thread setting being restored."""

from __future__ import annotations

import numpy as np
import pytest

from ctrag.errors import ConfigError
from ctrag.index import HNSWConfig, IndexConfig, IVFPQConfig
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


def test_gpu_is_an_error_without_one_and_auto_falls_back_to_cpu(vectors: np.ndarray) -> None:
    assert fb.gpu_count() == 0  # the CPU wheel this project pins
    assert fb.resolve_device("auto") == "cpu" and fb.resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="sees no GPU"):
        fb.resolve_device("gpu")
    with pytest.raises(ConfigError, match="sees no GPU"):
        fb.build_faiss_index(vectors, IndexConfig(device="gpu"))
    index, _ = fb.build_faiss_index(vectors, IndexConfig(device="auto"))
    assert fb.to_search_device(index, "flat", "auto") is index


def test_gpu_dispatch_moves_only_what_faiss_can_run_on_a_gpu(
    vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """With a GPU visible, flat and in-memory IVF-PQ are copied to it; HNSW and on-disk lists stay on the CPU.

    This machine has no GPU, so FAISS's GPU entry points are replaced by recorders: what is checked is which
    indexes ctrag hands to them, not FAISS's GPU code.
    """
    import faiss

    moved: list[object] = []

    def fake_to_gpu(index):  # type: ignore[no-untyped-def]
        moved.append(index)
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake_to_gpu, raising=False)
    assert fb.resolve_device("auto") == "gpu" and fb.resolve_device("gpu") == "gpu"
    assert fb.resolve_device("cpu") == "cpu"
    flat, _ = fb.build_faiss_index(vectors, IndexConfig(device="cpu"))
    hnsw, _ = fb.build_faiss_index(vectors, IndexConfig(kind="hnsw", device="cpu", threads=1))
    ivf_cfg = IndexConfig(kind="ivfpq", device="cpu", threads=1, ivfpq=IVFPQConfig(bits=4))
    ivf, _ = fb.build_faiss_index(vectors, ivf_cfg)
    on_disk_cfg = IndexConfig(kind="ivfpq", device="cpu", threads=1, ivfpq=IVFPQConfig(bits=4, on_disk=True))
    on_disk, _ = fb.build_faiss_index(vectors, on_disk_cfg, ondisk_dir=tmp_path)
    assert fb.is_on_disk(on_disk) and not fb.is_on_disk(ivf) and not fb.is_on_disk(flat)
    for index, kind in ((flat, "flat"), (hnsw, "hnsw"), (ivf, "ivfpq"), (on_disk, "ivfpq")):
        fb.to_search_device(index, kind, "auto")
    assert moved == [flat, ivf]
    # Training on a GPU hands k-means a GPU flat index (the recorder returns the CPU one it was given).
    moved.clear()
    fb.build_faiss_index(vectors, IndexConfig(kind="ivfpq", device="gpu", threads=1, ivfpq=IVFPQConfig(bits=4)))
    assert len(moved) == 1 and isinstance(moved[0], faiss.IndexFlatIP)


def test_on_disk_build_needs_a_folder_for_its_lists(vectors: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="needs ondisk_dir"):
        fb.build_faiss_index(vectors, IndexConfig(kind="ivfpq", ivfpq=IVFPQConfig(on_disk=True)))


def _rss_file_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("RssFile:"))


def test_rescoring_from_a_memory_map_does_not_keep_its_pages_resident(tmp_path, vectors: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    big = np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float32, shape=(40_000, 384))
    big[:] = np.tile(vectors, (40_000 // len(vectors) + 1, 1))[:40_000]
    del big
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    assert not fb.release_mapped_pages(np.asarray(vectors)) and not fb.release_mapped_pages(
        np.load(tmp_path / "v.npy", mmap_mode="c")  # copy-on-write: unmapping would drop private changes
    )
    before = _rss_file_kb()
    touched = float(np.asarray(mapped[::50]).sum())  # scattered rows map far more than themselves
    assert np.isfinite(touched) and _rss_file_kb() - before > 10_000
    assert fb.release_mapped_pages(mapped)
    assert _rss_file_kb() - before < 2_000
    index, _ = fb.build_faiss_index(np.asarray(mapped[:2000]), IndexConfig())
    scores, rows = fb.search_rescored(index, mapped, np.asarray(mapped[:3]), 2, 64)
    assert _rss_file_kb() - before < 2_000
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert rows.shape == (3, 2)
