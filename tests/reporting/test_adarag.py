"""AdaRAG-CT on real CT-RATE train reports with the tiny decoder; emissions are scripted where counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from testsupport.index_data import read_ct_rate

from ctrag.errors import InvalidInputError, LeakageError
from ctrag.reporting.adarag import RAG_TOKEN, AdaRAGConfig, AdaRAGModel, rag_target
from ctrag.reporting.concepts import ConceptConfig
from ctrag.reporting.lm import TinyDecoderConfig
from ctrag.reporting.training.adarag import AdaRAGTrainConfig, save_adarag, train_adarag
from ctrag.reporting.visual import VisualConfig

TINY = TinyDecoderConfig(vocab_size=400, n_layer=1, n_head=2, n_embd=32, n_positions=1024)
VIS = VisualConfig(
    size=(32, 32, 16), patch_size=(16, 16, 16), geometry_size=(16, 16, 8), tower_channels=(8, 8), tower_strides=(2, 2)
)
CT = Path(__file__).resolve().parents[2] / "sample_data" / "ct" / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz"


@pytest.fixture(scope="module")
def trained() -> Any:
    cases = read_ct_rate("train", 30)
    cfg = AdaRAGTrainConfig(steps=3, batch_size=2, lm=TINY, visual=VIS, model=AdaRAGConfig(max_new_tokens=20))
    return train_adarag(cases, cfg)


class Scripted(torch.nn.Module):
    """Wraps the LM: each forward call makes the next scripted token the argmax, ``fallback`` the runner-up."""

    def __init__(self, real: Any, script: list[int], fallback: int) -> None:
        super().__init__()
        self.real, self.script, self.fallback, self.calls = real, script, fallback, 0
        self.config = real.config

    def get_input_embeddings(self) -> Any:
        return self.real.get_input_embeddings()

    def forward(self, inputs_embeds: torch.Tensor, **_: Any) -> Any:
        self.calls_inputs = inputs_embeds.shape[1]
        v = self.real.get_input_embeddings().weight.shape[0]
        logits = torch.zeros(1, inputs_embeds.shape[1], v)
        logits[0, -1, self.fallback] = 1.0
        logits[0, -1, self.script[min(self.calls, len(self.script) - 1)]] = 2.0
        self.calls += 1
        return type("Out", (), {"logits": logits})()


class CountingBank:
    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def search(self, *a: Any, **kw: Any) -> Any:
        self.calls += 1
        return self.inner.search(*a, **kw)


class RaisingBank:
    def search(self, *a: Any, **kw: Any) -> Any:
        raise AssertionError("the sentence bank was searched")


def _script(model: AdaRAGModel, text: str, rag_at: list[int]) -> list[int]:
    ids = model.lm.token_ids(text)
    out: list[int] = []
    for i, t in enumerate(ids):
        if i in rag_at:
            out.append(model.rag_id)
        out.append(t)
    return [*out, int(model.lm.tokenizer.eos_token_id)]


def _with_script(model: AdaRAGModel, script: list[int]) -> Scripted:
    real = model.lm.model
    fallback = model.lm.token_ids(" the")[0]
    s = Scripted(real, script, fallback)
    model.lm.model = s
    return s


def test_rag_targets_mark_abnormal_sentences() -> None:
    t = rag_target("Heart size is normal. There is a 5 mm nodule in the right lung.", "")
    assert t.count(RAG_TOKEN) == 1 and t.index(RAG_TOKEN) > t.index("normal.")


def test_each_emission_is_one_retrieval_with_injected_context(trained: Any, capsys: Any) -> None:
    model, bank, _ = trained
    real = model.lm.model
    try:
        scripted = _with_script(model, _script(model, "There is a nodule in the lung. Pleural effusion", [7, 9]))
        counting = CountingBank(bank)
        rep = model.generate(counting, exclude_case_ids=["x"], max_retrievals=5)
        assert len(rep.retrievals) == 2
        # one search per region of the partial sentence, one retrieval per emission
        assert counting.calls == sum(len(r.regions) for r in rep.retrievals)
        assert rep.prompt_context and all(s["text"] in rep.prompt_context for r in rep.retrievals for s in r.sentences)
        prompt_len = model.lm.embed_pieces(model.prompt(None, rep.prompt_context)).shape[0]
        assert scripted.calls_inputs >= prompt_len  # the last LM input held the injected contexts
        assert RAG_TOKEN not in rep.text
        from ctrag.cli.cmd_report import _print_lm_result  # the text view of `ctrag report --method adarag`

        _print_lm_result(rep.to_dict())
        shown = capsys.readouterr().out
        assert "Retrievals (2):" in shown and rep.text in shown
        assert all(f"{s['case_id']} ({s['region']}" in shown for r in rep.retrievals for s in r.sentences)
        scripted.calls = 0
        capped = model.generate(CountingBank(bank), max_retrievals=1)
        assert len(capped.retrievals) == 1
    finally:
        model.lm.model = real


def test_no_rag_never_touches_the_bank_and_oracle_needs_the_report(trained: Any) -> None:
    model, _, _ = trained
    real = model.lm.model
    try:
        _with_script(model, _script(model, "There is a nodule in the lung.", [2, 4]))
        rep = model.generate(RaisingBank(), mode="no_rag")
        assert rep.retrievals == [] and rep.prompt_context == []
        with pytest.raises(InvalidInputError):
            model.generate(None, mode="oracle")
        own = "There is a 6 mm nodule in the right lung. Heart size is normal."
        model.lm.model.calls = 0
        orc = model.generate(RaisingBank(), mode="oracle", own_report=own)
        assert orc.retrievals and all(s["text"] in own for r in orc.retrievals for s in r.sentences)
    finally:
        model.lm.model = real


def test_leakage_guard_and_train_only(trained: Any) -> None:
    model, bank, _ = trained
    victim = bank.sentences[0]
    q = model.encoder.encode_text([victim.text])[0]
    from ctrag.reporting.adarag import _bank_hits

    hits = _bank_hits(bank, list(victim.regions) or ["lung"], q, 5, {victim.case_id}, set())
    assert hits and all(h["case_id"] != victim.case_id for h in hits)
    with pytest.raises(LeakageError):
        train_adarag(read_ct_rate("val", 2), AdaRAGTrainConfig(steps=1, lm=TINY, visual=VIS))
    assert model.cfg.concepts == ConceptConfig(enabled=False)


def test_cli_report_adarag_on_shipped_ct(trained: Any, tmp_path: Path, capsys: Any) -> None:
    from ctrag.cli import main

    model, bank, summary = trained
    save_adarag(model, bank, summary, tmp_path / "m")
    for extra in ([], ["--no-rag"]):
        assert main(["report", str(CT), "--method", "adarag", "--lm", str(tmp_path / "m"), "--json", *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["method"] == "adarag" and isinstance(out["report"], str)
        assert out["mode"] == ("no_rag" if extra else "adaptive")
    assert main(["report", str(CT), "--method", "adarag", "--lm", str(tmp_path / "m"), "--oracle"]) != 0
    assert np.isfinite(summary["loss_last"])


# ------------------------------------------------------------------------------------------- [RAG] placement
SEEN = "The heart size is normal. No pleural effusion is seen."
UNSEEN = "A spiculated 14 mm mass abuts the left hilum with mediastinal lymphadenopathy."


def test_uncertain_placement_flags_what_the_model_has_not_learned() -> None:
    from dataclasses import replace

    from ctrag.reporting.lm import tiny_report_lm
    from ctrag.reporting.sentences import tag_report
    from ctrag.reporting.training.adarag import sentence_nll, uncertain_flags

    train = read_ct_rate("train", 40)
    model = AdaRAGModel(tiny_report_lm([c.report_text for c in train], TINY), AdaRAGConfig(prefix_tokens=0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(25):  # a few steps on one repeated normal report: the model becomes sure of exactly that text
        loss = model.lm.loss([model.prompt(None, [])] * 2, [SEEN] * 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    case = replace(train[0], report_findings=f"{SEEN} {UNSEEN}", report_impression="")
    assert [s.text for s in tag_report(case.report_findings)][-1] == UNSEEN
    (scores,) = sentence_nll(model, [case], lambda c: "")
    assert len(scores) == 3 and scores[2] > 2 * max(scores[:2])
    (flags,), thr = uncertain_flags([scores], 0.5)
    assert flags == [False, False, True] and max(scores[:2]) <= thr < scores[2]


def test_tagged_fraction_follows_the_quantile_and_only_inserts_the_token() -> None:
    from ctrag.reporting.sentences import tag_report
    from ctrag.reporting.training.adarag import uncertain_flags

    rng = np.random.default_rng(0)
    scores = [list(rng.gamma(2.0, 1.0, size=int(n))) for n in rng.integers(3, 15, size=60)]
    for q in (0.5, 0.7, 0.9):
        flags, thr = uncertain_flags(scores, q)
        frac = sum(map(sum, flags)) / sum(map(len, flags))
        assert abs(frac - (1 - q)) < 0.01 and thr == pytest.approx(np.quantile(np.concatenate(scores), q))
    case = read_ct_rate("train", 5)[3]
    n = len(tag_report(case.report_findings, case.report_impression))
    plain = rag_target(case.report_findings, case.report_impression, [False] * n)
    for flags in ([True] * n, [i % 2 == 0 for i in range(n)], None):
        t = rag_target(case.report_findings, case.report_impression, flags)
        assert t.replace(f"{RAG_TOKEN} ", "") == plain
        assert t.count(RAG_TOKEN) == (sum(flags) if flags else sum(s.abnormal for s in tag_report(case.report_text)))
    with pytest.raises(InvalidInputError):
        rag_target(case.report_findings, case.report_impression, [True])


def test_uncertain_training_records_placement_and_threshold() -> None:
    cases = read_ct_rate("train", 20)
    cfg = AdaRAGTrainConfig(
        steps=1, batch_size=2, warmup_steps=3, rag_placement="uncertain", rag_uncertainty_quantile=0.7, lm=TINY,
        visual=VIS, model=AdaRAGConfig(max_new_tokens=8),
    )  # fmt: skip
    _, _, summary = train_adarag(cases, cfg)
    assert summary["rag_placement"] == "uncertain" and summary["warmup_steps"] == 3
    scored = summary["rag_sentences"] - summary["rag_unscored_sentences"]
    assert isinstance(summary["rag_nll_threshold"], float) and abs(summary["rag_tagged"] / scored - 0.3) < 0.02
    from ctrag.errors import ConfigError

    with pytest.raises(ConfigError):
        AdaRAGTrainConfig(rag_placement="everywhere")
