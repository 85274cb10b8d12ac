"""``ctrag search`` end to end, in-process through ``ctrag.cli.main``, on an index of real CT-RATE reports and real
CTs with masks built by ``ctrag index`` (conftest.py): JSON and table output, filters, strategies, report files,
held-out query cases, usage errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from testsupport import index_data as support

from ctrag.cli import main
from ctrag.data.case import Corpus
from tests.cli.conftest import EFFUSION, search_json

SAMPLE_CT = Path(__file__).resolve().parents[2] / "sample_data" / "ct"


def test_search_json_matches_the_library(
    index_dir: Path, patched: None, capsys: pytest.CaptureFixture[str], test_encoder: Any
) -> None:
    from ctrag.retrieval.retriever import Retriever

    payload = search_json(capsys, EFFUSION, "--index", str(index_dir), "--k", "3")
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
    payload = search_json(capsys, EFFUSION, "--index", str(index_dir), "--has-mask")
    masked = payload["hits"]
    assert {h["case_id"] for h in masked} == {"ts_example_sm", "ts_chest_crop"}
    # paths are printed relative to the corpus the index was built from, like the manifest stores them
    assert payload["corpus"] == str(corpus_dir.resolve())
    assert not any(Path(h["mask_path"]).is_absolute() or Path(h["volume_path"]).is_absolute() for h in masked)
    assert all((corpus_dir / h["mask_path"]).is_file() and (corpus_dir / h["volume_path"]).is_file() for h in masked)
    with_ct = search_json(capsys, EFFUSION, "--index", str(index_dir), "--has-volume", "--k", "10")["hits"]
    assert {h["case_id"] for h in with_ct} == {"ts_example_sm", "ts_chest_crop"}  # the only cases with a CT here
    labelled = search_json(capsys, EFFUSION, "--index", str(index_dir), "--label", "Pleural effusion")["hits"]
    assert labelled and all("Pleural effusion" in h["labels"] for h in labelled)

    far = search_json(capsys, EFFUSION, "--index", str(index_dir), "--strategy", "farthest", "--k", "4")["hits"]
    assert [h["score"] for h in far] == sorted(h["score"] for h in far)
    rand = [
        [
            h["case_id"]
            for h in search_json(capsys, EFFUSION, "-i", str(index_dir), "--strategy", "random", "--seed", "5")["hits"]
        ]
        for _ in range(2)
    ]
    assert rand[0] == rand[1] and len(set(rand[0])) == 5
    query = support.read_ct_rate("train", 0, ("train_175",))[0].report_text
    mmr = search_json(capsys, query, "-i", str(index_dir), "--strategy", "mmr", "--k", "3")["hits"]
    near = search_json(capsys, query, "-i", str(index_dir), "--k", "3")["hits"]
    assert [h["case_id"] for h in near[:2]] == ["train_175", "train_742"]
    assert len({h["patient_id"] for h in mmr}) == 3

    report = tmp_path / "query.txt"
    report.write_text(EFFUSION + "\n", encoding="utf-8")
    from_file = search_json(capsys, "--index", str(index_dir), "--report-file", str(report), "--k", "3")["hits"]
    inline = search_json(capsys, EFFUSION, "--index", str(index_dir), "--k", "3")["hits"]
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


def test_search_with_a_held_out_corpus_case(
    corpus_dir: Path, index_dir: Path, patched: None, capsys: pytest.CaptureFixture[str]
) -> None:
    val = Corpus.load(corpus_dir).split("val")[0]
    payload = search_json(capsys, "--query-case", val.case_id, "--corpus", str(corpus_dir), "-i", str(index_dir))
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


def test_search_with_the_stored_onnx_encoder_never_imports_torch(real_index_dir: Path) -> None:
    """The cold-start path: an index from `ctrag index` answers a text query with ONNX Runtime alone, and the
    hits equal those of the torch encoder (`--no-onnx`)."""
    import subprocess
    import sys

    code = (
        "import io, json, sys, contextlib\n"
        "from ctrag.cli import main\n"
        "def run(*extra):\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        f"        assert main(['search', {EFFUSION!r}, '--index', {str(real_index_dir)!r}, '--json', *extra]) == 0\n"
        "    return json.loads(buf.getvalue())['hits']\n"
        "onnx = run()\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "torch_hits = run('--no-onnx')\n"
        "assert 'torch' in sys.modules\n"
        "assert [h['case_id'] for h in onnx] == [h['case_id'] for h in torch_hits]\n"
        "assert max(abs(a['score'] - b['score']) for a, b in zip(onnx, torch_hits)) < 1e-4\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]


# ------------------------------------------------- issue 14: --region, --diverse, --abstain, --volume/--text/--mix
RECIPE = "Preheat the oven to 180 degrees. Whisk two eggs with sugar, fold in the flour and bake for 25 minutes."


def test_search_region_rerank_stays_inside_stage_one(
    index_dir: Path, patched: None, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = search_json(capsys, EFFUSION, "--index", str(index_dir), "--k", "6")
    lung = search_json(capsys, EFFUSION, "--index", str(index_dir), "--k", "3", "--region", "pleura",
                       "--stage1", "6", "--region-weight", "1")  # fmt: skip
    assert lung["method"]["region"] == "pleura" and lung["method"]["stage1"] == 6
    assert {h["case_id"] for h in lung["hits"]} <= {h["case_id"] for h in plain["hits"]}
    assert all("effusion" in h["report_text"].lower() for h in lung["hits"][:1])
    capsys.readouterr()
    assert main(["search", EFFUSION, "--index", str(index_dir), "--region", "liver lobe"]) != 0
    assert "unknown region" in capsys.readouterr().err


def test_search_diverse_and_abstain(index_dir: Path, patched: None, capsys: pytest.CaptureFixture[str]) -> None:
    div = search_json(capsys, EFFUSION, "--index", str(index_dir), "--k", "8", "--diverse")
    patients = [h["patient_id"] for h in div["hits"]]
    assert len(set(patients)) == len(patients) == 8 and div["method"]["one_per_patient"] is True
    far = search_json(capsys, RECIPE, "--index", str(index_dir), "--abstain")
    assert far["abstained"] is True and far["hits"] == []
    assert far["abstention"]["top_score"] < far["abstention"]["threshold"] and far["abstention"]["quantile"] == 0.05
    near = search_json(capsys, support.read_ct_rate("val", 1)[0].report_text, "--index", str(index_dir), "--abstain")
    assert near["abstained"] is False and len(near["hits"]) == 5
    assert near["abstention"]["top_score"] >= near["abstention"]["threshold"]


def test_search_composed_volume_and_text(
    index_dir: Path, capsys: pytest.CaptureFixture[str], test_encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctrag.cli import _shared
    from ctrag.encoders.clip import SharedSpaceEncoder
    from tests.encoders.conftest import PRE, make_tower

    shared = SharedSpaceEncoder(test_encoder, make_tower(), PRE)
    monkeypatch.setattr(_shared, "load_encoder", lambda name, w, d: shared if name == "tower-dir" else test_encoder)
    ct = str(SAMPLE_CT / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz")
    base = ["--index", str(index_dir), "--volume", ct, "--volume-encoder", "tower-dir", "--k", "4"]
    only_ct = search_json(capsys, *base)
    assert only_ct["weights"] == {"text": 0.0, "volume": 1.0} and only_ct["query"] is None
    vols = [h["terms"]["volume"] for h in only_ct["hits"]]
    assert vols == sorted(vols, reverse=True) and "text" not in only_ct["hits"][0]["terms"]
    both = search_json(capsys, *base, "--text", EFFUSION, "--mix", "text=3,volume=1")
    assert both["weights"] == {"text": 0.75, "volume": 0.25}  # normalised, not refused
    assert all(set(h["terms"]) == {"text", "volume"} for h in both["hits"])
    text_only = search_json(capsys, *base, "--text", EFFUSION, "--mix", "text=1,volume=0")
    plain = search_json(capsys, EFFUSION, "--index", str(index_dir), "--k", "4")
    assert [h["case_id"] for h in text_only["hits"]] == [h["case_id"] for h in plain["hits"]]  # weight 0 removes CT
    for args, message in (
        (["--mix", "text=-1,volume=1", "--text", EFFUSION], ">= 0"),
        (["--mix", "text=0,volume=0", "--text", EFFUSION], "at least one weight"),
        (["--mix", "colour=1"], "unknown term"),
    ):
        capsys.readouterr()
        assert main(["search", *base, *args]) != 0
        assert message in capsys.readouterr().err
    capsys.readouterr()
    assert main(["search", "--index", str(index_dir), "--volume", ct]) != 0
    assert "--volume needs --volume-encoder" in " ".join(capsys.readouterr().err.split())
