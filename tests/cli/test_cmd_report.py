"""``ctrag report`` in-process on the real-encoder index of the CLI fixtures (real CT-RATE train reports): a
shipped CT, a real val report, and the usage errors (one line, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from testsupport import index_data as support

from ctrag.cli import main
from ctrag.data.case import Corpus
from ctrag.reporting.sentences import REGIONS

SAMPLE_CT = Path(__file__).resolve().parents[2] / "sample_data" / "ct"
CT = SAMPLE_CT / "ts_example_ct_3mm.nii.gz"
MASK = SAMPLE_CT / "ts_example_ct_3mm_seg_total_fast.nii.gz"


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["report", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)  # type: ignore[no-any-return]


def test_report_for_a_shipped_ct(real_index_dir: Path, corpus_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train_ids = {c.case_id for c in Corpus.load(corpus_dir).split("train")}
    out = _json(capsys, str(CT), "--mask", str(MASK), "--index", str(real_index_dir))
    assert out["method"] == "retrieval" and out["mode"] == "compose"
    assert out["query"]["kind"] == "volume" and out["query"]["image_conditioned"] is False
    assert any("NOT conditioned" in n for n in out["query"]["notes"])
    assert out["sentences"] and all(s["case_id"] in train_ids and s["split"] == "train" for s in out["sentences"])
    assert all(s["text"] in out["report"] for s in out["sentences"])
    # without a mask the classical segmenter is run, and the output says so
    out = _json(
        capsys,
        str(SAMPLE_CT / "lowres" / "lung_pet_ct_dx_A0001_ct_128.nii.gz"),
        "--index",
        str(real_index_dir),
        "--nearest",
    )
    assert out["query"]["mask_source"] == "classical-segmenter" and out["mode"] == "nearest"
    assert len(out["sources"]) == 1 and out["sentences"][0]["case_id"] == out["sources"][0]["case_id"]


def test_report_for_a_real_val_report(real_index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    val = support.read_ct_rate("val", 1)[0]
    path = tmp_path / "val.txt"
    path.write_text(val.report_text, encoding="utf-8")
    out = _json(
        capsys, "--query-report", str(path), "--index", str(real_index_dir), "--per-region", "2", "--source-cases", "4"
    )
    assert out["query"]["kind"] == "text" and out["query"]["text"] == val.report_text
    per_region: dict[str, list[str]] = {}
    for s in out["sentences"]:
        assert s["split"] == "train" and s["case_id"] != val.case_id
        if s["region"]:
            per_region.setdefault(s["region"], []).append(s["case_id"])
    assert per_region and all(len(v) == len(set(v)) <= 2 for v in per_region.values())
    # the plain-text form prints the report and each sentence's source
    capsys.readouterr()
    assert main(["report", "--query-report", str(path), "--index", str(real_index_dir), "--source-cases", "3"]) == 0
    text = capsys.readouterr().out
    assert "Findings:" in text and all(f"{s['case_id']} (train" in text for s in out["sentences"][:3])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "adarag"], "needs --lm"),
        (["--method", "reg2rg"], "needs --lm"),
        (["--method", "diffvp"], "needs --lm"),
        (["--method", "gpt"], "unknown --method"),
        ([], "give one query"),
        (["{missing}"], "does not exist"),
        (["{readme}"], "not a NIfTI"),
        ([str(CT), "--mask", str(SAMPLE_CT / "lowres" / "ts_example_ct_sm_3mm_seg_total.nii.gz")], "another grid"),
        ([str(CT), "--index", "{noindex}"], "does not exist"),
        (["--query-report", "{empty}"], "empty"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, real_index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    subst = {
        "{missing}": str(tmp_path / "nope.nii.gz"),
        "{readme}": str(SAMPLE_CT.parent / "README.md"),
        "{noindex}": str(tmp_path / "no-index"),
        "{empty}": str(tmp_path / "empty.txt"),
    }
    argv = [subst.get(a, a) for a in args]
    if "--index" not in argv:
        argv += ["--index", str(real_index_dir)]
    if argv[:1] == ["--method"]:
        argv = [str(CT), *argv]
    capsys.readouterr()
    assert main(["report", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------- reg2rg
TINY_REG2RG = [
    "--steps", "2", "--text-steps", "2", "--max-text-cases", "20",
    "--set", "lm.vocab_size=350", "--set", "lm.n_embd=32", "--set", "lm.n_head=2", "--set", "lm.n_layer=1",
    "--set", "lm.n_positions=512", "--set", "visual.size=[32,32,32]", "--set", "visual.patch_size=[16,16,16]",
    "--set", "visual.geometry_size=[8,8,8]", "--set", "model.max_paragraph_tokens=4",
    "--set", "model.max_impression_tokens=4", "--set", "targets_per_case=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def reg2rg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reg2rg") / "model"
    code = main(["train", "reporter", "--method", "reg2rg", "--out", str(out), "--cases", str(SAMPLE_CT),
                 *TINY_REG2RG, "--no-progress"])  # fmt: skip
    assert code == 0
    return out


def test_reg2rg_report_for_a_shipped_ct(reg2rg_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    meta = json.loads((reg2rg_dir / "reg2rg.json").read_text("utf-8"))
    assert meta["training"]["report_sources"] == {"annotation-derived": 4}
    assert "lidc_idri_0314" in meta["training"]["held_out_cases_not_read"]
    out = _json(capsys, str(CT), "--mask", str(MASK), "--method", "reg2rg", "--lm", str(reg2rg_dir))
    assert out["method"] == "reg2rg" and out["mask_source"] == "given"
    assert [p["region"] for p in out["paragraphs"]] == list(REGIONS)
    missing = {r["region"] for r in out["visual"]["regions"] if not r["present"]}
    assert "breast" in missing and all(p["present"] == (p["region"] not in missing) for p in out["paragraphs"])
    out = _json(capsys, str(CT), "--method", "reg2rg", "--lm", str(reg2rg_dir), "--region", "bone", "--region", "lung")
    assert [p["region"] for p in out["paragraphs"]] == ["bone", "lung"] and out["mask_source"] == "segmenter:classical"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([str(CT), "--method", "reg2rg"], "needs --lm"),
        ([str(CT), "--method", "reg2rg", "--lm", "{missing}"], "does not exist"),
        ([str(CT), "--method", "reg2rg", "--lm", "{model}", "--region", "spleen"], "not regions of this model"),
    ],
)
def test_reg2rg_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, reg2rg_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [{"{missing}": str(tmp_path / "nope"), "{model}": str(reg2rg_dir)}.get(a, a) for a in args]
    capsys.readouterr()
    assert main(["report", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------- adarag (CLI)
TINY_ADARAG = [
    "--steps", "2", "--max-text-cases", "20",
    "--set", "lm.vocab_size=350", "--set", "lm.n_embd=32", "--set", "lm.n_head=2", "--set", "lm.n_layer=1",
    "--set", "lm.n_positions=1024", "--set", "visual.size=[32,32,16]", "--set", "visual.patch_size=[16,16,16]",
    "--set", "visual.geometry_size=[16,16,8]", "--set", "visual.tower_channels=[8,8]",
    "--set", "visual.tower_strides=[2,2]", "--set", "model.max_new_tokens=12",
]  # fmt: skip


def test_train_and_report_adarag_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adarag"
    code = main(["train", "reporter", "--method", "adarag", "--out", str(out), "--cases", str(SAMPLE_CT),
                 *TINY_ADARAG, "--no-progress"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    assert main(["report", str(CT), "--method", "adarag", "--lm", str(out), "--no-rag", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["retrievals"] == [] or not result.get("retrievals")
    # without --json: readable text (mode, report, retrievals with their source cases), not JSON
    assert main(["report", str(CT), "--method", "adarag", "--lm", str(out), "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert main(["report", str(CT), "--method", "adarag", "--lm", str(out)]) == 0
    text = capsys.readouterr().out
    assert not text.lstrip().startswith("{") and "mode: adaptive" in text and as_json["report"] in text
    cases = {h["case_id"] for r in as_json["retrievals"] for h in r["sentences"]}
    assert all(c in text for c in cases) and (f"Retrievals ({len(as_json['retrievals'])})" in text or not cases)
    # a setting of another method's section is refused, not silently ignored
    capsys.readouterr()
    bad = ["train", "reporter", "--method", "adarag", "--out", str(tmp_path / "x"), "--cases", str(SAMPLE_CT),
           "--steps", "1", "--set", "model.max_paragraph_tokens=4", "--no-progress"]  # fmt: skip
    assert main(bad) == 2
    assert "max_paragraph_tokens" in capsys.readouterr().err


def test_train_reporter_runtime_options_reach_the_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adarag"
    code = main(["train", "reporter", "--method", "adarag", "--out", str(out), "--cases", str(SAMPLE_CT),
                 *TINY_ADARAG, "--precision", "bf16", "--gradient-checkpointing", "--no-progress"])  # fmt: skip
    assert code == 0
    runtime = json.loads((out / "training_summary.json").read_text("utf-8"))["runtime"]
    assert runtime["precision"] == "bf16" and runtime["gradient_checkpointing"] is True
    assert runtime["world_size"] == 1 and runtime["steps"] == 2 and runtime["trainable_parameters"] > 0
    base = ["train", "reporter", "--method", "diffvp", "--out", str(tmp_path / "x"), "--cases", str(SAMPLE_CT),
            "--steps", "1", "--no-progress"]  # fmt: skip
    assert "runtime.precision" in _err(capsys, *base, "--precision", "fp8")
    assert "needs a base LM folder" in _err(capsys, *base, "--lora", "on")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ --concepts / --no-concepts (CLI)
def _err(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def test_concepts_switch_is_saved_and_followed_by_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ctrag.data.nifti import load_volume
    from ctrag.evaluation.classifier import ClassifierConfig, ClinicalClassifier, _seeded_ctnet
    from ctrag.reporting.concepts import ConceptConfig, concept_prompt

    out = tmp_path / "adarag"
    code = main(["train", "reporter", "--method", "adarag", "--out", str(out), "--cases", str(SAMPLE_CT),
                 *TINY_ADARAG, "--concepts", "--set", "rag_placement=uncertain", "--text-steps", "2",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    meta = json.loads((out / "adarag.json").read_text("utf-8"))
    summary = json.loads((out / "training_summary.json").read_text("utf-8"))
    assert meta["config"]["concepts"]["enabled"] is True and summary["concepts"] and summary["concept_cases"] > 0
    assert summary["rag_placement"] == "uncertain" and summary["warmup_steps"] == 2 and summary["rag_nll_threshold"]
    report = ["report", str(CT), "--method", "adarag", "--lm", str(out), "--no-rag"]
    assert "--classifier" in _err(capsys, *report)
    assert "trained with concept prompts; --no-concepts does not match" in _err(capsys, *report, "--no-concepts")
    ccfg = ClassifierConfig(input_shape=(32, 32, 24), trunk_channels=(4, 4, 4, 4), reducer_channels=(4, 4))
    clf = ClinicalClassifier(_seeded_ctnet(ccfg), ccfg)
    clf.save(tmp_path / "clf")
    result = _json(capsys, *report[1:], "--concepts", "--classifier", str(tmp_path / "clf"))
    want = concept_prompt(clf.predict_proba([load_volume(CT)])[0], ConceptConfig(**meta["config"]["concepts"]))
    assert result["concepts"] == want and want.startswith("Concepts:")
    assert "reg2rg has no concept prompt" in _err(
        capsys, "train", "reporter", "--method", "reg2rg", "--out", str(tmp_path / "r"), "--concepts"
    )
    # DiffVP: --no-concepts drops its diagnostic anchor text; report refuses to put it back
    dout = tmp_path / "diffvp"
    code = main(["train", "reporter", "--method", "diffvp", "--out", str(dout), "--cases", str(SAMPLE_CT),
                 *TINY_ADARAG, "--text-steps", "1", "--no-concepts", "--no-progress"])  # fmt: skip
    assert code == 0
    assert json.loads((dout / "diffvp.json").read_text("utf-8"))["config"]["anchor"]["enabled"] is False
    dres = _json(capsys, str(CT), "--method", "diffvp", "--lm", str(dout))
    assert "Concepts:" not in dres["anchor"] and dres["report"] is not None
    err = _err(capsys, "report", str(CT), "--method", "diffvp", "--lm", str(dout), "--concepts")
    assert "trained without concept prompts" in err
