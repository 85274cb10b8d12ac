"""The Ray embedding engine on a local Ray cluster of 2 workers, with real CT-RATE reports from sample_data/.

The index the Ray engine builds equals the single-process one; a job killed after some shards resumes without
embedding them again (each sidecar names the run that embedded it); damaged shards and shards of another
encoder are embedded again; a worker with another encoder is refused. The packaged MiniLM (real factory) for
the equality test, the LSA test encoder (``testsupport.ray_encoders``) where only the shard bookkeeping is under test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray  # the `ray` extra is part of the `test` extra
from testsupport import index_data as support
from testsupport.ray_encoders import LsaBuilder, TaggedLsa, worker_env

from ctrag.encoders.factory import create_encoder
from ctrag.errors import DataValidationError, InvalidInputError, MissingDependencyError
from ctrag.index import build_index
from ctrag.index import ray_embed as re_
from ctrag.index.ray_embed import EncoderSpec, RayEmbedConfig, RayEmbedder, ShardStore, embed_on_ray, plan_shards
from ctrag.retrieval.hybrid import HybridConfig, HybridGrid


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """One local Ray cluster of 2 CPUs for the module; the engine reuses the open session."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in worker_env().items():
            mp.setenv(key, value)
        mp.setenv("RAY_AUTH_MODE", "disabled")
        temp = tempfile.mkdtemp(prefix="ctrag-ray-test-")
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False, logging_level="WARNING")
        try:
            yield str(ray.get_runtime_context().gcs_address)
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def reports() -> list[str]:
    return [c.report_text for c in support.read_ct_rate("train", 40)]


def _lsa(reports: list[str], tag: str = "", delay: float = 0.0) -> LsaBuilder:
    return LsaBuilder(tuple(reports), tag=tag, delay=delay)


def _sidecars(work: Path) -> dict[int, dict[str, Any]]:
    return {
        int(p.stem.split("-")[1]): json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((work / "shards").glob("shard-*.json"))
    }


# ------------------------------------------------------------------------------------------------ unit parts


def test_shards_are_stable_and_pinned_to_their_texts(reports: list[str]) -> None:
    shards = plan_shards(reports[:10], 4)
    assert [(s.index, s.start, s.stop, s.name) for s in shards] == [
        (0, 0, 4, "shard-00000"),
        (1, 4, 8, "shard-00001"),
        (2, 8, 10, "shard-00002"),
    ]
    assert plan_shards(reports[:10], 4) == shards
    edited = [*reports[:10]]
    edited[5] += " Minimal change."
    again = plan_shards(edited, 4)
    assert [a.texts_sha256 == b.texts_sha256 for a, b in zip(shards, again, strict=True)] == [True, False, True]
    with pytest.raises(InvalidInputError, match="shard_size must be >= 1"):
        plan_shards(reports, 0)


def test_clear_errors_without_ray_or_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInputError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1 .*ray start --head"):
        re_._check_reachable("127.0.0.1:1")
    with pytest.raises(InvalidInputError, match="must be 'auto' or HOST:PORT"):
        re_._check_reachable("headnode")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ctrag\[ray\]'"):
        re_._import_ray()
    with pytest.raises(InvalidInputError, match="workers must be >= 1"):
        RayEmbedConfig(workers=0)


# ------------------------------------------------------------------------------------------------ on the cluster


def test_ray_index_equals_the_single_process_index(cluster: str, tmp_path: Path) -> None:
    """Same recipe, other embedding engine: same vectors, same cases, same scorer, same metadata but the clock.

    The packaged MiniLM through the real factory on both sides: the workers rebuild it from its spec, as
    ``ctrag index --engine ray`` has them do."""
    cases = support.read_ct_rate("train", 24) + support.read_ct_rate("val", 3)
    hybrid = HybridConfig(cv_folds=2, grid=HybridGrid(lcs=(0.0, 1.0), bm25=(0.0, 0.5), dense=(0.0, 1.0)))
    common: dict[str, Any] = {"hybrid_config": hybrid, "seed": 1, "batch_size": 8, "encoder_spec": {"name": "t"}}
    encoder = create_encoder("minilm")
    local = build_index(cases, encoder, **common)
    calls: list[tuple[str, int, int]] = []
    engine = RayEmbedder.for_encoder(
        encoder, EncoderSpec("minilm"), work_dir=tmp_path / "work", config=RayEmbedConfig(shard_size=8, batch_size=8)
    )
    remote = build_index(cases, encoder, embed=engine, progress=lambda *a: calls.append(a), **common)
    assert engine.last is not None and engine.last.workers == 2 and sorted(engine.last.embedded) == [0, 1, 2]
    assert calls[-1] == ("fit hybrid scorer", 1, 1) and ("embed shards", 3, 3) in calls
    assert ("embed reports", 24, 24) in calls
    np.testing.assert_allclose(remote.embeddings, local.embeddings, rtol=0, atol=1e-6)
    a, b = local.index.save(tmp_path / "local"), remote.index.save(tmp_path / "ray")
    meta_a, meta_b = (json.loads((v / "index.json").read_text(encoding="utf-8")) for v in (a, b))
    for meta in (meta_a, meta_b):
        meta.pop("created")
        meta["files"]["index.faiss"].pop("sha256"), meta["files"]["vectors.npy"].pop("sha256")
    assert meta_a == meta_b
    assert (a / "cases.jsonl").read_bytes() == (b / "cases.jsonl").read_bytes()
    hybrid_a = {p.relative_to(a): p.read_bytes() for p in sorted((a / "hybrid").rglob("*")) if p.is_file()}
    hybrid_b = {p.relative_to(b): p.read_bytes() for p in sorted((b / "hybrid").rglob("*")) if p.is_file()}
    assert hybrid_a == hybrid_b and hybrid_a
    queries = local.embeddings[:5]
    np.testing.assert_array_equal(local.index.search(queries, 5)[1], remote.index.search(queries, 5)[1])


_KILLED_JOB = """
import sys
from testsupport.ray_encoders import LsaBuilder, TaggedLsa
from testsupport.index_data import read_ct_rate
from ctrag.index.ray_embed import EncoderSpec, RayEmbedConfig, embed_on_ray

reports = [c.report_text for c in read_ct_rate("train", 40)]
cfg = RayEmbedConfig(shard_size=4, batch_size=4, workers=2, in_flight_per_worker=1, address=sys.argv[2])
embed_on_ray(reports, LsaBuilder(tuple(reports), delay=0.3), fingerprint=TaggedLsa(reports).fingerprint, dim=32,
             work_dir=sys.argv[1], config=cfg)
"""


def test_a_killed_job_resumes_without_reembedding_finished_shards(
    cluster: str, tmp_path: Path, reports: list[str]
) -> None:
    """SIGKILL a job (its own process, joined to the cluster by address) mid-way; the rerun embeds only the
    missing shards (sidecars name the run that embedded each one; finished files are not touched)."""
    work = tmp_path / "work"
    env = {**os.environ, **worker_env()}
    job = subprocess.Popen([sys.executable, "-c", _KILLED_JOB, str(work), cluster], env=env)
    try:
        deadline = time.monotonic() + 60
        while len(list((work / "shards").glob("*.json"))) < 3 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.poll() is None, "the job ended before it could be killed"
        job.send_signal(signal.SIGKILL)
    finally:
        job.kill()
        job.wait()
    done = _sidecars(work)
    assert 3 <= len(done) < 10 and len({s["run_id"] for s in done.values()}) == 1
    mtimes = {i: (work / "shards" / f"shard-{i:05d}.npy").stat().st_mtime_ns for i in done}
    fingerprint = TaggedLsa(reports).fingerprint
    cfg = RayEmbedConfig(shard_size=4, batch_size=4, workers=2)
    vectors, report = embed_on_ray(reports, _lsa(reports), fingerprint=fingerprint, dim=32, work_dir=work, config=cfg)
    assert sorted(report.reused) == sorted(done) and sorted(report.embedded) == sorted(set(range(10)) - set(done))
    assert not report.redo_reasons and not list((work / "shards").glob(".*"))  # no torn shard, no temp file left
    after = _sidecars(work)
    assert all(after[i] == done[i] for i in done)  # same run id, same checksums: not embedded again
    assert {after[i]["run_id"] for i in report.embedded} == {report.run_id}
    assert {i: (work / "shards" / f"shard-{i:05d}.npy").stat().st_mtime_ns for i in done} == mtimes
    np.testing.assert_allclose(vectors, TaggedLsa(reports).encode_text(reports), rtol=0, atol=1e-5)
    # a third run finds every shard done and starts no Ray worker at all
    again, third = embed_on_ray(reports, _lsa(reports), fingerprint=fingerprint, dim=32, work_dir=work, config=cfg)
    assert third.embedded == [] and third.workers == 0 and len(third.reused) == 10
    np.testing.assert_array_equal(again, vectors)


def test_damaged_or_foreign_shards_are_embedded_again(cluster: str, tmp_path: Path, reports: list[str]) -> None:
    work = tmp_path / "work"
    texts = reports[:24]
    fingerprint = TaggedLsa(reports, "", 0.0).fingerprint
    cfg = RayEmbedConfig(shard_size=4, batch_size=4, workers=2)
    run = {"builder": _lsa(reports), "fingerprint": fingerprint, "dim": 32, "work_dir": work, "config": cfg}
    clean, _ = embed_on_ray(texts, **run)
    store = ShardStore(work)
    shards = plan_shards(texts, 4)
    # shard 1: one flipped value (the .npy still loads); shard 2: another encoder's fingerprint; shard 3: torn
    damaged = np.load(store.vectors_path(shards[1]))
    damaged[0, 0] += 0.5
    np.save(store.vectors_path(shards[1]), damaged)
    side = json.loads(store.sidecar_path(shards[2]).read_text(encoding="utf-8"))
    side["encoder_fingerprint"] = "minilm@other"
    store.sidecar_path(shards[2]).write_text(json.dumps(side), encoding="utf-8")
    store.vectors_path(shards[3]).write_bytes(store.vectors_path(shards[3]).read_bytes()[:100])
    vectors, report = embed_on_ray(texts, **run)
    assert sorted(report.embedded) == [1, 2, 3] and sorted(report.reused) == [0, 4, 5]
    assert report.redo_reasons[1] == "vector checksum mismatch"
    assert report.redo_reasons[2] == f"embedded by encoder minilm@other, not {fingerprint}"
    assert report.redo_reasons[3].startswith("unreadable vectors")
    np.testing.assert_array_equal(vectors, clean)
    # another encoder for the whole job: every shard is embedded again, with the new fingerprint recorded
    other = TaggedLsa(reports, "v2", 0.0).fingerprint
    _, report = embed_on_ray(texts, **{**run, "builder": _lsa(reports, tag="v2"), "fingerprint": other})
    assert sorted(report.embedded) == list(range(6)) and not report.reused
    assert {s["encoder_fingerprint"] for s in _sidecars(work).values()} == {other}


def test_a_worker_with_another_encoder_is_refused(cluster: str, tmp_path: Path, reports: list[str]) -> None:
    with pytest.raises(DataValidationError, match=r"built encoder lsa-test \(lsa-test@v3, dim 32\).*lsa-test@0"):
        embed_on_ray(reports[:8], _lsa(reports, tag="v3"), fingerprint="lsa-test@0", dim=32, work_dir=tmp_path,
                     config=RayEmbedConfig(shard_size=4, workers=1))  # fmt: skip
    assert not list((tmp_path / "shards").glob("*.json"))
