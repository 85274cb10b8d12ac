"""Batched generation (``GenerationPipeline.generate_batch``) against single generations, and the report table,
seeds and resumable output folders of ``ctrag.generation.batch``, on the session-trained tiny run and real
CT-RATE validation reports (CLI: tests/cli/test_cmd_generate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctrag.errors import InvalidInputError
from ctrag.generation.batch import (
    OUTPUT_NAME,
    PROVENANCE_NAME,
    ReportRequest,
    derive_seed,
    generate_reports,
    is_complete,
    parse_shard,
    read_report_table,
)

STEPS = 4
# Batched convolutions/attention may sum in another order than batch-1 ones; the latents are O(1), the volumes
# are HU in [-1000, 1000]; on CPU (1 thread) the batched volumes differ from single ones by at most ~0.0023 HU
# (not bit-identical), so this bound allows kernel rounding and nothing else.
HU_TOLERANCE = 1e-2


def test_batch_of_three_equals_three_single_generations(pipeline, val_reports) -> None:  # type: ignore[no-untyped-def]
    reports, seeds = val_reports[:3], [11, 12, 13]
    batched = pipeline.generate_batch(reports, seeds, strategy="nearest", steps=STEPS)
    singles = [pipeline(r, strategy="nearest", seed=s, steps=STEPS) for r, s in zip(reports, seeds, strict=True)]
    for b, s in zip(batched, singles, strict=True):
        assert not isinstance(b, Exception)
        assert b.retrieved == s.retrieved and b.seed == s.seed
        assert np.array_equal(b.mask, s.mask) and np.array_equal(b.affine, s.affine)
        np.testing.assert_allclose(b.volume, s.volume, rtol=0, atol=HU_TOLERANCE)
    # the three CTs are three different samples, not one broadcast
    assert not np.allclose(batched[0].volume, batched[1].volume)  # type: ignore[union-attr]


def test_batch_text_only_and_a_failed_report_keeps_its_place(pipeline, val_reports) -> None:  # type: ignore[no-untyped-def]
    out = pipeline.generate_batch([val_reports[0], "   ", val_reports[1]], [1, 2, 3], strategy="none", steps=2)
    assert isinstance(out[1], InvalidInputError) and "empty" in str(out[1])
    single = pipeline(val_reports[1], strategy="none", seed=3, steps=2)
    assert out[2].mask is None  # type: ignore[union-attr]
    np.testing.assert_allclose(out[2].volume, single.volume, rtol=0, atol=HU_TOLERANCE)  # type: ignore[union-attr]
    with pytest.raises(InvalidInputError, match="one seed per report"):
        pipeline.generate_batch(val_reports[:2], [1])


def _csv(path: Path, rows: list[list[str]], header: str = "id,report_text") -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        fh.write(header + "\n")
        csv.writer(fh).writerows(rows)
    return path


def test_read_report_table_seeds_and_bad_tables(tmp_path: Path, val_reports) -> None:  # type: ignore[no-untyped-def]
    table = _csv(
        tmp_path / "ok.csv", [["0012", val_reports[0], ""], ["b-2", val_reports[1], "7"]], "id,report_text,seed"
    )
    reqs = read_report_table(table, base_seed=5)
    assert [r.id for r in reqs] == ["0012", "b-2"]  # ids stay text
    assert reqs[0].seed == derive_seed(5, "0012") and reqs[0].seed_source == "derived"
    assert reqs[1].seed == 7 and reqs[1].seed_source == "column"
    assert derive_seed(5, "0012") != derive_seed(6, "0012") != derive_seed(5, "0013")
    bad = {
        "lacks column": (_csv(tmp_path / "a.csv", [["x", "Normal."]], "case,report_text"), {}),
        "repeats id": (_csv(tmp_path / "b.csv", [["x", "Normal."], ["x", "Effusion."]]), {}),
        "empty": (_csv(tmp_path / "c.csv", [["x", "  "]]), {}),
        "over": (_csv(tmp_path / "d.csv", [["x", "lung " * 40_000]]), {}),
        "over the": (_csv(tmp_path / "d2.csv", [["x", "lung " * 20_000]]), {}),
        "folder name": (_csv(tmp_path / "e.csv", [["../evil", "Normal."]]), {}),
        "no data rows": (_csv(tmp_path / "f.csv", []), {}),
        "not an integer": (_csv(tmp_path / "g.csv", [["x", "Normal.", "-3"]], "id,report_text,seed"), {}),
        "does not exist": (tmp_path / "missing.csv", {}),
    }
    for message, (path, kwargs) in bad.items():
        with pytest.raises(InvalidInputError, match=message):
            read_report_table(path, **kwargs)
    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(InvalidInputError):
        parse_shard("3/3")


def test_generate_reports_resumes_and_redoes_partial_outputs(pipeline, val_reports, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reqs = [ReportRequest(f"r{i}", val_reports[i], derive_seed(0, f"r{i}"), "derived") for i in range(3)]
    reqs.append(ReportRequest("bad", "\x00binary", 1, "column"))
    out = tmp_path / "many"
    seen: list[tuple[str, int, int]] = []
    first = generate_reports(pipeline, reqs, out, batch_size=2, steps=2, png=False, progress=lambda *a: seen.append(a))
    assert first.written == ["r0", "r1", "r2"] and list(first.failed) == ["bad"] and not first.skipped
    assert ("reports", 4, 4) in seen
    prov = json.loads((out / "r2" / PROVENANCE_NAME).read_text())
    assert prov["report_id"] == "r2" and prov["seed"] == reqs[2].seed
    assert prov["batch"]["ids"] == ["r2", "bad"] and prov["batch"]["position"] == 0
    assert json.loads((out / "batch_summary.json").read_text())["failed"].keys() == {"bad"}
    # a truncated provenance and a missing CT are redone; the finished one is skipped untouched
    (out / "r0" / PROVENANCE_NAME).write_text(prov_text := (out / "r0" / PROVENANCE_NAME).read_text()[:50])
    (out / "r1" / OUTPUT_NAME).unlink()
    stamp = (out / "r2" / OUTPUT_NAME).stat().st_mtime_ns
    assert not is_complete(out / "r0", reqs[0]) and prov_text
    second = generate_reports(pipeline, reqs[:3], out, batch_size=3, steps=2, png=False)
    assert second.skipped == ["r2"] and sorted(second.written) == ["r0", "r1"] and not second.failed
    assert (out / "r2" / OUTPUT_NAME).stat().st_mtime_ns == stamp
    assert all(is_complete(out / r.id, r) for r in reqs[:3])
    # an edited report is not "done" under its old output
    edited = ReportRequest("r2", val_reports[3], reqs[2].seed, "derived")
    assert not is_complete(out / "r2", edited)
