"""The 1B-class report-LM benchmark runs end to end (a small LLaMA shape on CPU) and records its figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_reporter_lm_gpu.py"


@pytest.mark.slow
def test_smoke_run_trains_and_generates_with_lora_bf16_and_writes_figures(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_reporter_lm_gpu", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--shape", "smoke", "--device", "cpu", "--vocab", "600", "--methods", "diffvp", "--steps", "2",
            "--out", str(tmp_path), "--name", "smoke"]  # fmt: skip
    assert bench.main(args) == 0
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["lm"]["architecture"] == "LlamaForCausalLM" and result["lm"]["parameters"] > 0
    assert 1.0e9 < _tinyllama_parameters(bench) < 1.2e9  # the default shape is 1B-class
    (row,) = result["rows"]
    assert row["method"] == "diffvp" and row["finetune"] == "LoRA on a frozen base"
    assert row["train"]["steps"] == 2 and row["train"]["precision"] == "bf16"
    assert row["train"]["gradient_checkpointing"] is True and row["train"]["seconds_per_step_median"] > 0
    assert row["seconds_generation"] > 0 and row["peak_rss_mb"] > 0


def _tinyllama_parameters(bench: object) -> int:
    """Parameters of the default shape with a 32,000-token vocabulary, counted on the meta device (no memory)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, tie_word_embeddings=False, **bench.SHAPES["tinyllama-1.1b"])  # type: ignore[attr-defined]
    with torch.device("meta"):
        return sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
