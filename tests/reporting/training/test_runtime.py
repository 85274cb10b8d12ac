"""Execution settings of report-method training: bf16 autocast, LoRA with trainable added tokens, gradient
checkpointing, the per-process slice of a batch and two-process DDP (gloo on CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from ctrag.errors import ConfigError
from ctrag.generation.training.engine import DistInfo
from ctrag.reporting.lm import ReportLM, TinyDecoderConfig, tiny_report_lm
from ctrag.reporting.training.runtime import LMRuntime, StepRunner, training_lm

ROOT = Path(__file__).resolve().parents[3]
TRAIN = ROOT / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier" / "train.csv"
TINY = TinyDecoderConfig(vocab_size=300, n_layer=1, n_head=2, n_embd=32, n_positions=256)


@pytest.fixture(scope="module")
def reports() -> list[str]:
    with TRAIN.open(encoding="utf-8", newline="") as fh:
        return [row["report_text"] for _, row in zip(range(40), csv.DictReader(fh), strict=False)]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory, reports: list[str]) -> Path:
    """A random-weight GPT-2 saved as a Hugging Face folder, tokenizer trained on real train reports."""
    from transformers import GPT2Config, GPT2LMHeadModel

    lm = tiny_report_lm(reports, TINY)
    folder = tmp_path_factory.mktemp("hf-gpt2")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(lm.tokenizer), n_positions=256, n_embd=32, n_layer=1, n_head=2)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def test_runtime_rejects_unknown_settings() -> None:
    for bad in ({"precision": "fp8"}, {"lora": "maybe"}, {"device": "tpu"}, {"grad_clip": -1.0}):
        with pytest.raises(ConfigError):
            LMRuntime(**bad)  # type: ignore[arg-type]


def test_bf16_runs_the_loss_under_autocast_and_fp32_does_not(reports: list[str]) -> None:
    lm = tiny_report_lm(reports, TINY)
    seen: list[tuple[bool, torch.dtype]] = []

    def loss() -> torch.Tensor:
        logits = lm.model(input_ids=torch.tensor([lm.token_ids(reports[0])[:16]])).logits
        seen.append((torch.is_autocast_enabled("cpu"), logits.dtype))
        return lm.loss([["Report:"]], [reports[1]])

    before = lm.model.transformer.wte.weight.detach().clone()
    for precision in ("fp32", "bf16"):
        runner = StepRunner(lm, LMRuntime(precision=precision), lr=1e-2)
        value = runner.step(loss)
        assert value == value and value > 0  # finite
    assert seen == [(False, torch.float32), (True, torch.bfloat16)]
    assert lm.model.transformer.wte.weight.dtype == torch.float32  # trained weights stay fp32
    assert not torch.equal(before, lm.model.transformer.wte.weight)


def test_lora_bf16_freezes_a_bf16_base_and_trains_the_added_token_row(hf_folder: Path) -> None:
    lm, how = training_lm(str(hf_folder), LMRuntime(precision="bf16"), [], TINY, trainable_tokens=["[RAG]"])
    assert how == "LoRA on a frozen base"
    rag = int(lm.tokenizer.convert_tokens_to_ids("[RAG]"))
    trainable = {n: p for n, p in lm.named_parameters() if p.requires_grad}
    frozen = [p for p in lm.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert any(p.dtype == torch.bfloat16 for p in frozen)  # the base is stored in bf16
    emb_before = lm.model.get_input_embeddings()(torch.tensor([rag, 5])).detach().float().clone()
    runner = StepRunner(lm, LMRuntime(precision="bf16"), lr=5e-2)
    for _ in range(2):
        runner.step(lambda: lm.loss([["Findings:"]], ["[RAG] Nodule in the right lung."]))
    emb_after = lm.model.get_input_embeddings()(torch.tensor([rag, 5])).detach().float()
    assert not torch.equal(emb_before[0], emb_after[0])  # the [RAG] row learned
    assert torch.equal(emb_before[1], emb_after[1])  # an ordinary row of the frozen base did not


def test_lora_off_fine_tunes_in_full_and_checkpointing_is_switched_on(hf_folder: Path) -> None:
    runtime = LMRuntime(lora="off", gradient_checkpointing=True)
    lm, how = training_lm(str(hf_folder), runtime, [], TINY)
    assert how.startswith("full") and all(p.requires_grad for p in lm.parameters())
    assert lm.model.is_gradient_checkpointing
    lm_t, how_t = training_lm(None, LMRuntime(), ["Lungs are clear."] * 4, TINY)
    assert isinstance(lm_t, ReportLM) and how_t.startswith("full (tiny")


def test_shard_gives_each_process_its_contiguous_slice(reports: list[str]) -> None:
    runner = StepRunner(tiny_report_lm(reports[:10], TINY), LMRuntime(), lr=1e-3)
    batch = ["a", "b", "c", "d"]
    assert runner.shard(batch) == batch
    runner.dist = DistInfo(rank=1, world_size=2, local_rank=1)
    assert runner.shard(batch) == ["c", "d"]
    with pytest.raises(ConfigError, match="divisible by 2"):
        runner.shard(batch[:3])


@pytest.mark.slow
def test_two_processes_train_adarag_with_ddp_and_end_with_identical_weights(tmp_path: Path) -> None:
    """The torchrun path of `ctrag train reporter`: two gloo processes, each on its half of every batch."""
    import torch.multiprocessing as mp
    from testsupport.ddp_training import free_port, reporter_worker

    mp.spawn(reporter_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["runtime"]["world_size"] == ranks[1]["runtime"]["world_size"] == 2
    assert ranks[0]["digest"] == ranks[1]["digest"]  # DDP kept the replicas identical
    assert ranks[0]["loss_first"] == ranks[1]["loss_first"]  # the logged loss is the mean over processes


def test_lora_bf16_folder_reloads_with_its_trained_token_row(hf_folder: Path, tmp_path: Path) -> None:
    lm, _ = training_lm(str(hf_folder), LMRuntime(precision="bf16"), [], TINY, trainable_tokens=["[RAG]"])
    runner = StepRunner(lm, LMRuntime(precision="bf16"), lr=5e-2)
    runner.step(lambda: lm.loss([["Findings:"]], ["[RAG] Nodule in the right lung."]))
    rag = int(lm.tokenizer.convert_tokens_to_ids("[RAG]"))
    lm.save_pretrained(tmp_path / "lm")
    back = ReportLM.from_pretrained(tmp_path / "lm")  # the base comes back in bf16, so the fingerprint matches
    ids = torch.tensor([rag, 5])
    with torch.no_grad():
        assert torch.equal(lm.model.get_input_embeddings()(ids), back.model.get_input_embeddings()(ids))
        lm.eval()
        assert torch.equal(lm.model(input_ids=ids[None]).logits, back.model(input_ids=ids[None]).logits)


def test_checkpointing_with_lora_trains_adapters_on_a_text_only_prompt(hf_folder: Path) -> None:
    """Every input embedding is frozen here (no visual piece): the adapters must still get gradients."""
    runtime = LMRuntime(gradient_checkpointing=True)
    lm, how = training_lm(str(hf_folder), runtime, [], TINY)
    assert how == "LoRA on a frozen base" and lm.model.is_gradient_checkpointing
    lora_b = {n: p.detach().clone() for n, p in lm.named_parameters() if "lora_B" in n}
    runner = StepRunner(lm, runtime, lr=1e-2)
    runner.step(lambda: lm.loss([["Findings:"]], ["Nodule in the right lung."]))
    assert lora_b and all(not torch.equal(lora_b[n], p) for n, p in lm.named_parameters() if n in lora_b)
    info = runner.info()
    assert info["steps"] == 1 and info["seconds_first_step"] > 0 and info["seconds_per_step_median"] is None
