"""Report LM wrapper: tiny GPT-2 + BPE tokenizer fitted to shipped CT-RATE train reports, local HF folders."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch

from ctrag.errors import CheckpointMismatchError, WeightsNotFoundError
from ctrag.reporting.lm import LoRASettings, ReportLM, TinyDecoderConfig, load_causal_lm, tiny_report_lm

TRAIN = Path(__file__).resolve().parents[2] / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "train.csv"
TINY = TinyDecoderConfig(vocab_size=400, n_layer=1, n_head=2, n_embd=32, n_positions=256)


@pytest.fixture(scope="module")
def reports() -> list[str]:
    with TRAIN.open(encoding="utf-8", newline="") as fh:
        return [row["report_text"] for _, row in zip(range(60), csv.DictReader(fh), strict=False)]


@pytest.fixture(scope="module")
def lm(reports: list[str]) -> ReportLM:
    return tiny_report_lm(reports, TINY)


def test_tokenizer_round_trips_report_text(lm: ReportLM, reports: list[str]) -> None:
    ids = lm.token_ids(reports[0])
    assert lm.tokenizer.decode(ids) == reports[0]
    assert len(ids) < len(reports[0])  # BPE merges learned from the reports, not byte by byte


def test_save_load_round_trip_gives_identical_generation(lm: ReportLM, tmp_path: Path) -> None:
    vis = torch.randn(3, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    prompt = ["Region lung: ", vis, " Findings:"]
    greedy = lm.generate(prompt, max_new_tokens=12)
    beam = lm.generate(prompt, max_new_tokens=12, num_beams=3)
    lm.save_pretrained(tmp_path / "lm")
    back = ReportLM.from_pretrained(tmp_path / "lm")
    assert back.fingerprint == lm.fingerprint
    assert back.generate(prompt, max_new_tokens=12) == greedy
    assert back.generate(prompt, max_new_tokens=12, num_beams=3) == beam
    assert not list((tmp_path / "lm").rglob("*.bin")) and not list((tmp_path / "lm").rglob("*.pt"))  # no pickles


def test_changed_weights_are_refused(lm: ReportLM, tmp_path: Path) -> None:
    lm.save_pretrained(tmp_path / "lm")
    weights = tmp_path / "lm" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointMismatchError, match="changed"):
        ReportLM.from_pretrained(tmp_path / "lm")


def test_prefix_embeddings_condition_the_loss(lm: ReportLM, reports: list[str]) -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, lm.hidden_size, generator=g), torch.randn(2, lm.hidden_size, generator=g)
    la = lm.loss([["x", a]], [reports[1][:80]])
    lb = lm.loss([["x", b]], [reports[1][:80]])
    assert not torch.isclose(la, lb)
    la.backward()
    assert lm.model.get_input_embeddings().weight.grad is not None
    lm.model.zero_grad()


def test_long_target_is_cut_with_a_warning(lm: ReportLM, reports: list[str], caplog: pytest.LogCaptureFixture) -> None:
    long_text = " ".join(reports[:5])
    with caplog.at_level(logging.WARNING, logger="ctrag.reporting.lm"):
        loss = lm.loss([["Findings:"]], [long_text])
    assert torch.isfinite(loss)
    assert any("cut" in r.message for r in caplog.records)


VAL = TRAIN.with_name("val.csv")


def test_val_report_longer_than_the_context_is_truncated_to_fit(
    reports: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A real held-out report through a 32-position LM: the loss and generation inputs must stay inside the
    context (GPT-2 would index past its position table otherwise), and the cut must be said, not silent."""
    with VAL.open(encoding="utf-8", newline="") as fh:
        report = next(row["report_text"] for row in csv.DictReader(fh))
    short = tiny_report_lm(reports, TinyDecoderConfig(vocab_size=400, n_layer=1, n_head=2, n_embd=16, n_positions=32))
    assert len(short.token_ids(report)) > short.context_length
    lengths: list[int] = []

    def record(_module: torch.nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        x = kwargs.get("inputs_embeds")
        if isinstance(x, torch.Tensor):
            lengths.append(x.shape[1])

    handle = short.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with caplog.at_level(logging.WARNING, logger="ctrag.reporting.lm"):
            loss = short.loss([["Findings:"]], [report])
            assert torch.isfinite(loss)
            assert lengths and max(lengths) == short.context_length
            assert any("cut" in r.message and "context of 32" in r.message for r in caplog.records)
            caplog.clear()
            hf_generate = short.model.generate
            new_tokens: list[int] = []

            def counted(*args: object, **kwargs: object) -> torch.Tensor:
                out = hf_generate(*args, **kwargs)
                new_tokens.append(out.shape[1])  # embeddings-only input: the output holds the new tokens only
                return out

            short.model.generate = counted
            short.generate(["Findings:"], max_new_tokens=200)
    finally:
        handle.remove()
    assert any("max_new_tokens 200 cut" in r.message for r in caplog.records)
    prompt = short.embed_pieces(["Findings:"]).shape[0]
    assert new_tokens and prompt + new_tokens[0] <= short.context_length


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory, lm: ReportLM) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("hf-gpt2")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(lm.tokenizer), n_positions=128, n_embd=24, n_layer=1, n_head=2)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def test_hf_causal_lm_loads_from_a_local_folder(hf_folder: Path) -> None:
    lm = load_causal_lm(hf_folder)
    assert lm.hidden_size == 24 and lm.context_length == 128
    text = lm.generate(["The lungs", torch.zeros(1, 24)], max_new_tokens=5)
    assert isinstance(text, str)


def test_missing_or_wrong_lm_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_causal_lm(tmp_path / "nope")
    from transformers import BertConfig

    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16).save_pretrained(
        tmp_path / "bert"
    )
    with pytest.raises(CheckpointMismatchError, match="not a causal language model"):
        load_causal_lm(tmp_path / "bert")


def test_lora_trains_adapters_only_and_round_trips(hf_folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    lm = load_causal_lm(hf_folder, lora=LoRASettings(r=2, alpha=4, dropout=0.0, target_modules=("c_attn",)))
    trainable = {n for n, p in lm.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    with torch.no_grad():
        for n, p in lm.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)  # LoRA B starts at zero; make the adapter matter
    prompt = ["The lungs"]
    before = lm.generate(prompt, max_new_tokens=6)
    lm.save_pretrained(tmp_path / "lora")
    assert not (tmp_path / "lora" / "model" / "model.safetensors").exists()  # adapter only
    back = ReportLM.from_pretrained(tmp_path / "lora")
    assert back.generate(prompt, max_new_tokens=6) == before
