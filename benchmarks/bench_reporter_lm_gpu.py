"""Training steps and one generation of each report method (Reg2RG, AdaRAG-CT, DiffVP) with a 1B-class LM.

Issue 13 asks, where a GPU is lent, for one training step and one generation of each method with a 1B-class
public-architecture LM (random weights are fine), with memory and time. The LM here is a LLaMA with TinyLlama-1.1B's
shape (22 layers, width 2048, 32 heads / 4 KV heads, MLP 5632, 2048 positions) and random weights, saved in bf16
as a Hugging Face folder next to a byte-level BPE tokenizer trained on the shipped CT-RATE train reports (so the
vocabulary, and the parameter count, follow that tokenizer; both are recorded). Each method runs through its own
training recipe (``train_reg2rg`` / ``train_adarag`` / ``train_diffvp`` with ``runtime``: device, bf16, LoRA,
gradient checkpointing) on the shipped train CTs and reports, then generates once; each in a fresh process, so
peak memory is its own. The first step is timed apart (allocation, kernel choice); a step costs the same whatever
the weights hold. Generated text from random weights is noise and is not scored.

    python benchmarks/bench_reporter_lm_gpu.py --device cuda --out benchmarks/results          # the GPU figures
    python benchmarks/bench_reporter_lm_gpu.py --shape smoke --device cpu --out /tmp/bench     # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, write_result

ROOT = Path(__file__).resolve().parents[1]
CT_FOLDER = ROOT / "sample_data" / "ct"
TEXT_REPORTS = ROOT / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier"
METHODS = ("reg2rg", "adarag", "diffvp")

#: LLaMA shapes (``transformers.LlamaConfig`` fields; ``vocab_size`` comes from the tokenizer).
SHAPES: dict[str, dict[str, Any]] = {
    "tinyllama-1.1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
    },
    "smoke": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    },
}


def build_lm_folder(shape: str, folder: Path, vocab: int) -> dict[str, Any]:
    """A random-weight LLaMA of ``shape`` (bf16 safetensors) and a BPE tokenizer trained on train reports."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ctrag.data.ct_rate import read_ctclip_classifier
    from ctrag.reporting.lm import train_tokenizer

    texts = [c.report_text for c in read_ctclip_classifier(TEXT_REPORTS) if c.split == "train"]
    tokenizer = train_tokenizer(texts, vocab_size=vocab, min_frequency=1)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **SHAPES[shape],
    )
    model = LlamaForCausalLM(cfg)
    params = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return {"shape": shape, "architecture": "LlamaForCausalLM", "parameters": params, "vocab_size": len(tokenizer),
            **SHAPES[shape]}  # fmt: skip


def _cases() -> tuple[list[Any], list[Any]]:
    from ctrag.data.ct_rate import read_ctclip_classifier
    from ctrag.data.folder import read_folder

    pairs = [c for c in read_folder(CT_FOLDER) if c.split == "train" and c.has_volume and c.has_report]
    texts = [c for c in read_ctclip_classifier(TEXT_REPORTS) if c.split == "train"][:16]
    return pairs, texts


def one_method(method: str, folder: str, device: str, precision: str, lora: str, ckpt: bool, steps: int) -> dict:
    """Train ``steps`` steps of ``method`` on ``folder``'s LM, then generate one report; figures of this process."""
    from ctrag.reporting.training.runtime import LMRuntime

    runtime = LMRuntime(device=device, precision=precision, lora=lora, gradient_checkpointing=ckpt)  # type: ignore[arg-type]
    pairs, texts = _cases()
    dev = torch.device(device)
    started = time.perf_counter()
    if method == "reg2rg":
        from ctrag.data.nifti import load_volume
        from ctrag.reporting.reg2rg import Reg2RGConfig, Reg2RGReporter
        from ctrag.reporting.training.reg2rg import Reg2RGTrainConfig, train_reg2rg

        model_cfg = Reg2RGConfig(max_paragraph_tokens=32, max_impression_tokens=32)
        rcfg = Reg2RGTrainConfig(steps=steps, text_steps=0, batch_size=1, targets_per_case=2, model=model_cfg,
                                 runtime=runtime)  # fmt: skip
        model, summary = train_reg2rg(pairs, [], rcfg, base_lm=folder)
        trained = time.perf_counter()
        case = pairs[0]
        assert case.volume_path is not None
        volume = load_volume(case.volume_path)
        mask = load_volume(case.mask_path) if case.mask_path else None
        report = Reg2RGReporter(model).report(volume, mask, regions=("lung", "heart", "bone"))
        generated = {"regions": 3, "max_paragraph_tokens": 32, "max_impression_tokens": 32,
                     "characters": len(report.text)}  # fmt: skip
    elif method == "adarag":
        from ctrag.reporting.adarag import AdaRAGConfig
        from ctrag.reporting.training.adarag import AdaRAGTrainConfig, train_adarag

        acfg = AdaRAGTrainConfig(steps=steps, batch_size=2, model=AdaRAGConfig(max_new_tokens=64), runtime=runtime)
        model, bank, summary = train_adarag([*pairs, *texts], acfg, base_lm=folder)
        trained = time.perf_counter()
        out = model.generate(bank, mode="adaptive")
        generated = {"max_new_tokens": 64, "retrievals": len(out.retrievals), "characters": len(out.text)}
    else:
        from ctrag.reporting.diffvp import DiffVPConfig, visual_tokens
        from ctrag.reporting.training.diffvp import DiffVPTrainConfig, train_diffvp

        dcfg = DiffVPTrainConfig(steps=steps, text_steps=0, batch_size=1, model=DiffVPConfig(max_new_tokens=64),
                                 runtime=runtime)  # fmt: skip
        model, refs, summary = train_diffvp(pairs, [], dcfg, base_lm=folder)
        trained = time.perf_counter()
        target = visual_tokens(refs[0][1])
        result = model.report(target, visual_tokens(refs[-1][1]))
        generated = {"max_new_tokens": 64, "characters": len(result["report"])}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    done = time.perf_counter()
    row: dict[str, Any] = {
        "method": method,
        "finetune": summary.get("finetune"),
        "train": summary["runtime"],
        "seconds_recipe": round(trained - started, 2),  # loading the LM, features, sentence bank and the steps
        "seconds_generation": round(done - trained, 3),
        "generation": generated,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if dev.type == "cuda":
        row["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(dev) / 1e9, 3)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tinyllama-1.1b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--lora", choices=("auto", "on", "off"), default="on")
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=3, help="training steps per method (the first is timed apart)")
    ap.add_argument("--vocab", type=int, default=32000, help="tokenizer vocabulary asked for (BPE may learn fewer)")
    ap.add_argument("--lm-dir", help="where to write the random LM (default: a temporary folder)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", help="result file name (default reporter_lm_<shape>_<device>)")
    ap.add_argument("--method-row", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.method_row:  # a child process: one method, printed as JSON
        row = one_method(args.method_row, args.lm_dir, args.device, args.precision, args.lora,
                         args.gradient_checkpointing, args.steps)  # fmt: skip
        print(json.dumps(row))
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    with tempfile.TemporaryDirectory(prefix="ctrag-lm-") as tmp:
        folder = Path(args.lm_dir) if args.lm_dir else Path(tmp) / "lm"
        t0 = time.perf_counter()
        lm_info = build_lm_folder(args.shape, folder, args.vocab)
        lm_info["seconds_to_build_and_save"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(lm_info), flush=True)
        rows: list[dict[str, Any]] = []
        ckpt = "--gradient-checkpointing" if args.gradient_checkpointing else "--no-gradient-checkpointing"
        for method in methods:
            cmd = [sys.executable, __file__, "--shape", args.shape, "--device", args.device, "--precision",
                   args.precision, "--lora", args.lora, "--steps", str(args.steps), "--lm-dir", str(folder),
                   "--out", args.out, "--method-row", method, ckpt]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:  # out of memory is a result, not a crash of the whole run
                tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
                rows.append({"method": method, "error": tail[0]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1])[:400], flush=True)
    name = args.name or f"reporter_lm_{args.shape}_{args.device.split(':')[0]}"
    settings = {"device": args.device, "precision": args.precision, "lora": args.lora, "steps": args.steps,
                "gradient_checkpointing": args.gradient_checkpointing}  # fmt: skip
    out = write_result(args.out, name, {"lm": lm_info, "settings": settings, "rows": rows})
    print(out)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
