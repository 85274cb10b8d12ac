"""CaseIndex on real CT-RATE report embeddings: build, search, save/load, refusals, corruption, atomic saves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ctrag.errors import (
    DataValidationError,
    IncompatibleIndexError,
    InvalidInputError,
)
from ctrag.index import CaseIndex, IndexConfig, IVFPQConfig
from ctrag.index.storage import POINTER_NAME, STAGING_PREFIX, resolve_version_dir

# Approximate kinds tuned for a 55-vector test corpus: one FAISS thread (the test machine's cores are shared).
KIND_CONFIGS = {
    "flat": IndexConfig(kind="flat", threads=1),
    "hnsw": IndexConfig(kind="hnsw", threads=1),
    "ivfpq": IndexConfig(kind="ivfpq", threads=1, ivfpq=IVFPQConfig(bits=4, nprobe=4)),
}


def _build(cases, emb, encoder, kind: str = "flat") -> CaseIndex:  # type: ignore[no-untyped-def]
    return CaseIndex.build(
        emb,
        cases,
        encoder_fingerprint=encoder.fingerprint,
        encoder_name=encoder.name,
        config=KIND_CONFIGS[kind],
        encoder_spec={"name_or_path": "minilm-test"},
    )


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_each_kind_finds_each_report_and_round_trips(kind: str, support_module, test_encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cases, emb = support_module.train_part()
    index = _build(cases, emb, test_encoder, kind)
    assert (index.kind, len(index), index.dim, index.splits) == (kind, len(cases), 384, ("train",))

    scores, rows = index.search(emb, k=3, rerank=True)
    # Each report finds itself first (or a verbatim duplicate: train_523 and train_665 share their text).
    same_text = [cases[r].report_text == c.report_text for r, c in zip(rows[:, 0], cases, strict=True)]
    self_hits = float(np.mean(same_text))
    # Flat and HNSW are exact at this size; IVF-PQ shortlists by compressed codes, then exact re-scoring.
    assert self_hits == 1.0 if kind != "ivfpq" else self_hits >= 0.95
    if kind != "ivfpq":
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    exact = index.exact_scores(emb[:5], rows[:5, 0])
    np.testing.assert_allclose(scores[:5, 0], np.diag(exact), rtol=1e-5)

    version = index.save(tmp_path / "idx")
    back = CaseIndex.load(tmp_path / "idx", expected_fingerprint=test_encoder.fingerprint, expected_dim=384)
    assert back.kind == kind and back.case_ids == index.case_ids
    assert back.effective == index.effective
    b_scores, b_rows = back.search(emb, k=3, rerank=True)
    np.testing.assert_array_equal(b_rows, rows)
    np.testing.assert_allclose(b_scores, scores, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.vectors), emb)
    assert version.parent == tmp_path / "idx" and (version / "index.faiss").is_file()


def test_saved_metadata_and_cases_are_complete(train_index: CaseIndex, tmp_path: Path) -> None:
    version = train_index.save(tmp_path / "idx")
    meta = json.loads((version / "index.json").read_text())
    assert meta["format"] == "ctrag-case-index" and meta["format_version"] == 1
    assert (meta["kind"], meta["dim"], meta["count"]) == ("flat", 384, len(train_index))
    assert meta["encoder"]["fingerprint"] == train_index.encoder_fingerprint
    assert meta["encoder"]["spec"] == {"name_or_path": "minilm-test"}
    assert meta["splits"] == ["train"] and meta["split_counts"] == {"train": len(train_index)}
    assert meta["created"] and meta["ctrag_version"] and meta["components"] == {}
    assert set(meta["files"]) == {"index.faiss", "vectors.npy", "cases.jsonl"}
    assert (tmp_path / "idx" / POINTER_NAME).read_text().strip() == version.name

    back = CaseIndex.load(tmp_path / "idx")
    # Full case records survive: real report text, labels, real CT and mask paths, provenance of the text.
    for original in train_index.cases:
        assert back.case(back.row_of(original.case_id)) == original
    masked = [c for c in back.cases if c.has_mask]
    assert {c.case_id for c in masked} == {"ts_example_sm", "ts_chest_crop"}
    assert all(Path(c.mask_path).is_file() for c in masked)  # type: ignore[arg-type]


def test_exact_scores_match_numpy(train_index: CaseIndex, all_embeddings: np.ndarray) -> None:
    queries = all_embeddings[-3:]  # validation reports, not in the index
    full = train_index.exact_scores(queries)
    np.testing.assert_allclose(full, queries @ np.asarray(train_index.vectors).T, rtol=1e-5, atol=1e-6)
    rows = np.array([4, 0, 7])
    np.testing.assert_allclose(train_index.exact_scores(queries, rows), full[:, rows], rtol=1e-6)


def test_report_text_retrieval_is_meaningful(train_index: CaseIndex, test_encoder) -> None:  # type: ignore[no-untyped-def]
    """A query describing pleural effusion retrieves effusion-labelled reports far above their base rate."""
    from ctrag.data.labels import CT_RATE_LABELS

    col = CT_RATE_LABELS.index("Pleural effusion")
    labelled = [c for c in train_index.cases if c.labels is not None]
    base_rate = np.mean([c.labels[col] for c in labelled])  # type: ignore[index]
    q = test_encoder.encode_text(
        ["Bilateral pleural effusion, more prominent on the right, with compressive atelectasis."]
    )
    _, rows = train_index.search(q, k=5)
    top = [train_index.case(r) for r in rows[0]]
    hit_rate = np.mean([c.labels[col] for c in top if c.labels is not None])  # type: ignore[index]
    assert base_rate < 0.25 and hit_rate >= 0.6


def test_other_encoder_or_dimension_is_refused(train_index: CaseIndex, tmp_path: Path) -> None:
    train_index.save(tmp_path / "idx")
    with pytest.raises(IncompatibleIndexError) as err:
        CaseIndex.load(tmp_path / "idx", expected_fingerprint="minilm@0000000000000000")
    assert train_index.encoder_fingerprint in str(err.value) and "minilm@0000000000000000" in str(err.value)
    with pytest.raises(IncompatibleIndexError, match=r"dimension 384.*512"):
        CaseIndex.load(tmp_path / "idx", expected_dim=512)
    q = np.zeros((1, 512), np.float32)
    q[0, 0] = 1
    with pytest.raises(IncompatibleIndexError, match="query dimension 512 does not match the index dimension 384"):
        train_index.search(q, k=1)


def test_corrupted_or_missing_files_give_clear_errors(train_index: CaseIndex, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no index at"):
        CaseIndex.load(tmp_path / "nothing-here")
    (tmp_path / "not-index").mkdir()
    with pytest.raises(InvalidInputError, match="not a ctrag index folder"):
        CaseIndex.load(tmp_path / "not-index")

    version = train_index.save(tmp_path / "idx")
    vectors = version / "vectors.npy"
    data = vectors.read_bytes()
    vectors.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataValidationError, match=r"vectors\.npy has .* bytes.*corrupted"):
        CaseIndex.load(tmp_path / "idx")
    vectors.write_bytes(data[:-4] + b"\x00\x00\x80\x7f")  # same size, one value changed
    CaseIndex.load(tmp_path / "idx")  # size check passes; only the checksum sees the change
    with pytest.raises(DataValidationError, match="SHA-256"):
        CaseIndex.load(tmp_path / "idx", verify=True)
    vectors.write_bytes(data)
    (version / "index.faiss").unlink()
    with pytest.raises(DataValidationError, match=r"missing file index\.faiss"):
        CaseIndex.load(tmp_path / "idx")
    (version / "index.json").write_text("{not json")
    with pytest.raises(DataValidationError, match=r"unreadable index\.json"):
        CaseIndex.load(tmp_path / "idx")


class _ExplodingComponent:
    """A component whose save fails after writing part of its folder: a save interrupted mid-way."""

    def save(self, directory: str | os.PathLike[str]) -> None:
        Path(directory).mkdir()
        (Path(directory) / "half-written.bin").write_bytes(b"\x00" * 1024)
        raise OSError("disk full (injected)")


def test_interrupted_save_keeps_previous_index(
    train_index: CaseIndex, support_module, test_encoder, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "idx"
    first = train_index.save(root)
    cases, emb = support_module.train_part()
    replacement = _build(cases[:10], emb[:10], test_encoder)
    replacement.attach_component("broken", _ExplodingComponent())
    with pytest.raises(OSError, match="injected"):
        replacement.save(root)
    # The pointer still names the first version, which loads in full; no staging debris is left.
    assert resolve_version_dir(root) == first
    assert len(CaseIndex.load(root)) == len(train_index)
    assert not [p for p in root.iterdir() if p.name.startswith(STAGING_PREFIX)]
    # A later good save replaces it and removes the old version.
    second = _build(cases[:10], emb[:10], test_encoder).save(root)
    assert len(CaseIndex.load(root)) == 10 and not first.exists()
    assert sorted(p.name for p in root.iterdir()) == sorted([POINTER_NAME, second.name])


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import numpy as np
    from ctrag.data.case import Case
    from ctrag.index import CaseIndex
    from ctrag.index import case_index as ci

    root = Path(sys.argv[1])
    v = np.eye(8, 16, dtype=np.float32)
    cases = [Case(case_id=f"k{i}", patient_id=f"p{i}", split="train", report_findings="x") for i in range(8)]
    index = CaseIndex.build(v, cases, encoder_fingerprint="fp", encoder_name="enc")
    real_save = np.save

    def dying_save(path, arr):  # write half of the vectors file, then die without any cleanup
        real_save(path, arr)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        os._exit(9)

    ci.np.save = dying_save
    index.save(root)
    """
)


def test_killed_save_keeps_previous_index(train_index: CaseIndex, tmp_path: Path) -> None:
    """A writer killed mid-save (no exception handlers run) still leaves the old index loadable."""
    root = tmp_path / "idx"
    first = train_index.save(root)
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    staging = [p for p in root.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert len(staging) == 1 and (staging[0] / "vectors.npy").is_file()  # the dead writer's debris
    assert resolve_version_dir(root) == first
    back = CaseIndex.load(root, verify=True)
    assert back.case_ids == train_index.case_ids
    # The next save ignores fresh debris (it could be a live writer's) but removes stale debris.
    old = time.time() - 2 * 3600
    os.utime(staging[0], (old, old))
    train_index.save(root)
    assert not staging[0].exists()


def test_build_validates_inputs(support_module, test_encoder) -> None:  # type: ignore[no-untyped-def]
    cases, emb = support_module.train_part()
    kw = {"encoder_fingerprint": test_encoder.fingerprint, "encoder_name": test_encoder.name}
    with pytest.raises(InvalidInputError, match="must be L2-normalised"):
        CaseIndex.build(emb * 2.0, cases, **kw)
    with pytest.raises(InvalidInputError, match="embeddings for"):
        CaseIndex.build(emb[:-1], cases, **kw)
    with pytest.raises(InvalidInputError, match="nothing to index"):
        CaseIndex.build(emb[:0], [], **kw)
    bad = emb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        CaseIndex.build(bad, cases, **kw)
    with pytest.raises(DataValidationError, match="duplicate case id"):
        CaseIndex.build(emb[:2], [cases[0], cases[0]], **kw)


def test_save_refuses_a_foreign_non_empty_folder(train_index: CaseIndex, tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.jsonl").write_text("{}\n")
    with pytest.raises(InvalidInputError, match="not empty and not a ctrag index"):
        train_index.save(tmp_path / "corpus")
    assert (tmp_path / "corpus" / "manifest.jsonl").read_text() == "{}\n"


def test_ivfpq_small_corpus_records_the_sizes_it_used(support_module, test_encoder) -> None:  # type: ignore[no-untyped-def]
    cases, emb = support_module.train_part()
    index = CaseIndex.build(
        emb,
        cases,
        encoder_fingerprint=test_encoder.fingerprint,
        encoder_name=test_encoder.name,
        config=IndexConfig(kind="ivfpq", threads=1, ivfpq=IVFPQConfig(nlist=64, bits=8)),
    )
    eff = index.effective
    assert eff["nlist"] == len(cases) // 39 and eff["bits"] == int(np.log2(len(cases))) and eff["m"] == 48
    index.set_search_params(nprobe=1)
    assert index.effective["nprobe"] == 1


def _on_disk_config(shard_size: int) -> IndexConfig:
    ivfpq = IVFPQConfig(bits=4, nprobe=4, on_disk=True, shard_size=shard_size)
    return IndexConfig(kind="ivfpq", threads=1, ivfpq=ivfpq)


def test_on_disk_index_survives_a_reopen_and_a_move(
    support_module,  # type: ignore[no-untyped-def]
    test_encoder,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    cases, emb = support_module.train_part()
    kwargs = {"encoder_fingerprint": test_encoder.fingerprint, "encoder_name": test_encoder.name}
    in_memory = CaseIndex.build(emb, cases, config=KIND_CONFIGS["ivfpq"], **kwargs)
    on_disk = CaseIndex.build(emb, cases, config=_on_disk_config(shard_size=16), **kwargs)  # 4 shards merged
    assert on_disk.on_disk and not in_memory.on_disk
    assert on_disk.effective["on_disk"] is True and on_disk.effective["shard_size"] == 16
    # Filling shard by shard and merging the lists on disk loses nothing: FAISS's answers equal the in-memory ones.
    m_scores, m_rows = in_memory.search(emb, k=5)
    d_scores, d_rows = on_disk.search(emb, k=5)
    np.testing.assert_array_equal(d_rows, m_rows)
    np.testing.assert_allclose(d_scores, m_scores, rtol=1e-6)
    r_scores, _ = on_disk.search(emb, k=5, rerank=True, shortlist=len(cases))
    exact = emb @ emb.T
    np.testing.assert_allclose(r_scores, -np.sort(-exact, axis=1)[:, :5], atol=1e-5)  # full shortlist = exact

    version = on_disk.save(tmp_path / "idx")
    assert (version / "index.ivfdata").is_file()
    meta = json.loads((version / "index.json").read_text(encoding="utf-8"))
    assert meta["files"]["index.ivfdata"]["bytes"] == (version / "index.ivfdata").stat().st_size
    np.testing.assert_array_equal(on_disk.search(emb, k=5)[1], d_rows)  # now reading the saved lists
    (tmp_path / "idx").rename(tmp_path / "moved")  # the lists are found beside the index, wherever it is
    capfd.readouterr()
    back = CaseIndex.load(tmp_path / "moved", verify=True)
    b_scores, b_rows = back.search(emb, k=5)
    captured = capfd.readouterr()
    assert captured.out == ""  # FAISS's messages about mapping the lists go to stderr, not into JSON output
    assert back.on_disk and back.effective == on_disk.effective
    np.testing.assert_array_equal(b_rows, d_rows)
    np.testing.assert_allclose(b_scores, d_scores, rtol=1e-6)
    back.set_search_params(nprobe=1)
    assert back.effective["nprobe"] == 1
    # Saving a loaded on-disk index again writes a complete new version (lists copied) and removes the old one.
    again = back.save(tmp_path / "moved")
    assert again != version and not (tmp_path / "moved" / version.name).exists()
    back.set_search_params(nprobe=4)
    np.testing.assert_array_equal(back.search(emb, k=5)[1], d_rows)


def test_on_disk_index_with_missing_or_torn_lists_is_refused(
    support_module,  # type: ignore[no-untyped-def]
    test_encoder,
    tmp_path: Path,
) -> None:
    cases, emb = support_module.train_part()
    index = CaseIndex.build(
        emb,
        cases,
        encoder_fingerprint=test_encoder.fingerprint,
        encoder_name=test_encoder.name,
        config=_on_disk_config(shard_size=1000),
    )
    version = index.save(tmp_path / "idx")
    lists = version / "index.ivfdata"
    data = lists.read_bytes()
    lists.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataValidationError, match=r"index\.ivfdata has .* bytes"):
        CaseIndex.load(tmp_path / "idx")
    lists.unlink()
    with pytest.raises(DataValidationError, match=r"missing file index\.ivfdata"):
        CaseIndex.load(tmp_path / "idx")


def test_rescored_search_recovers_exact_neighbours_from_a_shortlist(train_index: CaseIndex) -> None:
    emb = np.asarray(train_index.vectors)
    scores, rows = train_index.search(emb[:10], k=3, rerank=True, shortlist=8)
    exact = train_index.exact_scores(emb[:10], rows[:, 0])
    np.testing.assert_allclose(scores[:, 0], np.diag(exact), rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    with pytest.raises(InvalidInputError, match="shortlist must be >= 1"):
        train_index.search(emb[:1], k=3, rerank=True, shortlist=0)
