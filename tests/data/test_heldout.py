"""The held-out set of a preset: read from its evaluation section, the same cases the evaluation run evaluates."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrag.config import load_config
from ctrag.data.case import Corpus
from ctrag.data.heldout import HeldOut, held_out_set
from ctrag.errors import LeakageError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Corpus:
    from ctrag.data.ingest import ingest

    return ingest([sample_dir / "ct", sample_dir / "ct_rate_nc_sa"], tmp_path_factory.mktemp("heldout")).corpus


def test_preset_held_out_sets() -> None:
    assert held_out_set("tiny-cpu").splits == ("test", "val")  # test CTs and val reports are evaluated
    assert held_out_set("text2ct-512").splits == ("test",)
    assert held_out_set(None).splits == HeldOut().splits == ("test",)
    named = held_out_set({"evaluation": {"split": "test", "case_ids": ["a"], "report_case_ids": ["b"]}})
    assert named.case_ids == ("a", "b") and "evaluation section" in named.source
    assert held_out_set("tiny-cpu", ["evaluation.report_split=null"]).splits == ("test",)


@pytest.mark.parametrize("preset", ["tiny-cpu", "text2ct-512"])
def test_every_case_the_evaluation_selects_is_held_out(preset: str, corpus: Corpus) -> None:
    """The held-out set and ``GenerationEvalConfig`` read the same section: nothing evaluated escapes it."""
    from ctrag.evaluation.ablation import select_cases, select_report_cases
    from ctrag.evaluation.generation_config import GenerationEvalConfig

    eval_cfg = load_config(GenerationEvalConfig, preset, section="evaluation")
    evaluated = select_cases(list(corpus), eval_cfg) + select_report_cases(list(corpus), eval_cfg)
    held_out = held_out_set(preset)
    assert evaluated and set(held_out.offending(evaluated)) == {c.case_id for c in evaluated}
    train = [c for c in corpus if c.split == "train"]
    assert train and held_out.offending(train) == []


def test_refusals_name_the_split_and_the_cases(corpus: Corpus) -> None:
    held_out = held_out_set("tiny-cpu")
    with pytest.raises(LeakageError, match=r"split\(s\) \['val'\].*evaluation section of tiny-cpu"):
        held_out.check_splits(["train", "val"], "the generator")
    val = [c for c in corpus if c.split == "val"]
    with pytest.raises(LeakageError, match=val[0].case_id):
        held_out.check_cases(val, "the classifier")
    named = HeldOut(case_ids=("lung_pet_ct_dx_A0001",), source="test")
    with pytest.raises(LeakageError, match="lung_pet_ct_dx_A0001"):
        named.check_case_ids(["lung_pet_ct_dx_A0001", "x"], "the VAE")
