"""SigVLP vs the CNN volume tower on the shipped CTs, and SigVLP embed time vs slice count.

Data: the five shipped real CTs (``sample_data/ct/cases.csv``) with their annotation-derived captions; no shipped CT
has its own radiologist report, and only one (LIDC-IDRI-0314) is in the held-out split, so text -> volume retrieval
is measured leave-one-out: each CT in turn is held out, every tower is trained on the other four for the same number
of steps, and the held-out caption ranks the held-out CT among all five. Chance mean rank is 3.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_sigvlp.py --out benchmarks/results/sigvlp.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import machine_info

from ctrag.data.folder import read_folder
from ctrag.data.transforms import load_preprocess_config
from ctrag.encoders import create_encoder
from ctrag.encoders.clip import SharedSpaceEncoder
from ctrag.encoders.config import EncoderConfig, EncoderTrainConfig
from ctrag.encoders.preprocess import load_prepared
from ctrag.encoders.train import train_encoder
from ctrag.utils.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "cnn (ctrag-volume-tiny)": ("ctrag-volume-tiny", 0.0),
    "sigvlp, global loss only": ("sigvlp", 0.0),
    "sigvlp + chunk alignment": ("sigvlp", 1.0),
}


def timing(slices: list[int], repeats: int) -> list[dict[str, float]]:
    from ctrag.encoders.factory import get_model_config
    from ctrag.encoders.sigvlp import SigVLPTower, sigvlp_config_from_dict

    tower = SigVLPTower(sigvlp_config_from_dict(get_model_config("sigvlp")["tower"])).eval()
    rows = []
    with torch.inference_mode():
        tower(torch.rand(1, 1, 64, 64, 16))  # warm-up
        for k in slices:
            x = torch.rand(1, 1, 64, 64, k)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                tower(x)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            rows.append({"slices": k, "seconds": med, "ms_per_slice": 1000 * med / k})
    return rows


def retrieval(epochs: int, seeds: list[int]) -> dict[str, object]:
    cases = read_folder(ROOT / "sample_data" / "ct")
    minilm = create_encoder("minilm")
    preprocess = load_preprocess_config("tiny-cpu")
    texts = [c.report_text for c in cases]
    text_emb = minilm.encode_text(texts)
    out: dict[str, object] = {}
    for label, (model, weight) in MODELS.items():
        ranks, seconds, chunk_ranking = [], [], []
        for seed in seeds:
            for held in range(len(cases)):
                train = [replace(c, split="train" if i != held else "test") for i, c in enumerate(cases)]
                train_cfg = EncoderTrainConfig(
                    epochs=epochs, batch_size=8, lr=3e-3, chunk_align_weight=weight, seed=seed
                )
                cfg = EncoderConfig(volume_model=model, train=train_cfg)
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    train_encoder(train, tmp, cfg, preprocess, text_encoder=minilm, resume=False)
                    seconds.append(time.perf_counter() - t0)
                    enc = create_encoder(tmp, text_encoder=minilm)
                    align = json.loads((Path(tmp) / "train_summary.json").read_text("utf-8"))["chunk_alignment"]
                    if align is not None:
                        chunk_ranking.append((align["ranking_before"], align["ranking_after"]))
                assert isinstance(enc, SharedSpaceEncoder)
                vols = np.concatenate(
                    [enc.encode_volume(load_prepared(c.volume_path, enc.preprocess).tensor[None]) for c in cases]
                )
                scores = vols @ text_emb[held]
                ranks.append(int((scores > scores[held]).sum()) + 1)
        out[label] = {
            "ranks": ranks,
            "mean_rank": float(np.mean(ranks)),
            "top1": float(np.mean([r == 1 for r in ranks])),
            "train_seconds_mean": float(np.mean(seconds)),
            # training-set chunk -> region-sentence ranking accuracy (chance 0.5), before -> after training
            "train_chunk_ranking_before_after": (
                [float(np.mean([b for b, _ in chunk_ranking])), float(np.mean([a for _, a in chunk_ranking]))]
                if chunk_ranking
                else None
            ),
        }
    out["chance_mean_rank"] = (len(cases) + 1) / 2
    out["n_cts"] = len(cases)
    out["epochs"] = epochs
    out["seeds"] = seeds
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sigvlp.json")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-retrieval", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict[str, object] = {
        "machine": machine_info(),
        "embed_time_vs_slices": timing([37, 64, 150, 300], args.repeats),
    }
    if not args.skip_retrieval:
        result["text_to_volume_leave_one_out"] = retrieval(args.epochs, args.seeds)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
