"""Peak memory of ControlNet training vs corpus size: today's in-memory path against the streamed latent cache.

    python benchmarks/bench_train_memory.py --sizes 20,200 --out /tmp/bench_mem [--steps 10]

For each N an on-disk corpus of N cases is made from the shipped training CTs (copied under new names; the
held-out LIDC case is never used). A frozen VAE + UNet are trained for a few steps once (their quality does not
matter here). Then, each in a fresh subprocess so peak RSS is its own, the tiny-cpu ControlNet training runs the
same number of steps with ``train_controlnet.data.source`` = ``memory`` and = ``cache`` (cache build included in
the peak, excluded from s/step). Goal: the cache path's peak RSS does not grow with N (ratio <= 1.2).
Writes ``benchmarks/results/train_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "ct" / "lowres"
SOURCES = [
    "lung_pet_ct_dx_A0001_ct_128.nii.gz",
    "lung_pet_ct_dx_A0002_ct_128.nii.gz",
    "ts_chest_crop_ct_3mm.nii.gz",
]


def _overrides(steps: int) -> list[str]:
    return [
        f"train_controlnet.steps_per_epoch={steps}",
        "train_controlnet.batch_size=2",
        "train_controlnet.bank_crops=16",
        f"train_controlnet.save_every={steps}",
    ]


def make_corpus(n: int, folder: Path) -> list[dict[str, str]]:
    """N copies of the shipped training CTs under new names (one file each, as a real corpus has)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        src = SAMPLE / SOURCES[i % len(SOURCES)]
        dst = folder / f"copy{i:04d}_{src.name}"
        if not dst.exists():
            shutil.copyfile(src, dst)
        rows.append({"case_id": f"copy{i:04d}", "path": str(dst)})
    return rows


def _cases(rows: list[dict[str, str]]):  # type: ignore[no-untyped-def]
    from ctrag.data.case import Case

    return [Case(case_id=r["case_id"], patient_id=r["case_id"], split="train", volume_path=r["path"]) for r in rows]


def prepare_frozen(run: Path, rows: list[dict[str, str]]) -> None:
    """VAE + UNet trained for two steps each on a few cases: frozen weights for the ControlNet runs."""
    from ctrag.generation.config import load_generator_config
    from ctrag.generation.training import train_diffusion, train_vae

    cfg = load_generator_config(
        "tiny-cpu",
        ["train_vae.steps_per_epoch=2", "train_diffusion.steps_per_epoch=2", "train_diffusion.bank_crops=4"],
    )
    train_vae(_cases(rows[:3]), cfg, run)
    train_diffusion(_cases(rows[:3]), cfg, run)


def worker(args: argparse.Namespace) -> None:
    """One ControlNet training in this process; prints its figures as JSON."""
    import torch

    from ctrag.generation.config import load_generator_config
    from ctrag.generation.training import train_controlnet

    torch.set_num_threads(1)
    rows = json.loads(Path(args.rows).read_text())
    extra = [f"train_controlnet.data.source={args.source}", f"train_controlnet.data.num_workers={args.workers}"]
    cfg = load_generator_config("tiny-cpu", [*_overrides(args.steps), *extra])
    t0 = time.perf_counter()
    result = train_controlnet(_cases(rows), cfg, args.run, resume=False)
    total = time.perf_counter() - t0
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "source": args.source,
                "n_cases": len(rows),
                "steps": result.steps,
                "peak_rss_mb": round(self_kb / 1024, 1),
                "peak_rss_worker_mb": round(child_kb / 1024, 1) if args.workers else None,
                "s_per_step": round(result.seconds / max(1, result.steps), 4),
                "wall_s_total": round(total, 2),
                "prep_s": round(total - result.seconds, 2),
                "cache_cases": (result.info.get("latent_cache") or {}).get("cases"),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20,200")
    ap.add_argument("--out", default="", help="scratch folder for corpora, runs and caches (required)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the cache path")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--source", default="memory", help=argparse.SUPPRESS)
    ap.add_argument("--rows", default="", help=argparse.SUPPRESS)
    ap.add_argument("--run", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.out:
        ap.error("--out is required")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import write_result

    out = Path(args.out)
    sizes = [int(s) for s in args.sizes.split(",")]
    corpus_dir = out / "corpus"
    frozen = out / "frozen"
    if not (frozen / "unet" / "model.pt").is_file():
        prepare_frozen(frozen, make_corpus(3, corpus_dir))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for n in sizes:
        rows_file = out / f"rows_{n}.json"
        rows_file.write_text(json.dumps(make_corpus(n, corpus_dir)))
        for source in ("memory", "cache"):
            run = out / f"run_{source}_{n}"
            shutil.rmtree(run, ignore_errors=True)
            run.mkdir(parents=True)
            for part in ("vae", "unet", "sampler"):
                if (frozen / part).exists():
                    shutil.copytree(frozen / part, run / part)
            shutil.copy(frozen / "pipeline.json", run / "pipeline.json")
            cmd = [sys.executable, __file__, "--worker", "--source", source, "--rows", str(rows_file),
                   "--run", str(run), "--steps", str(args.steps), "--workers", str(args.workers)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{source} N={n} failed:\n{proc.stderr[-3000:]}")
            fig = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(fig), flush=True)
            runs.append(fig)
            if source == "cache":
                cache = run / "latent_cache"
                fig["cache_bytes"] = sum(p.stat().st_size for p in cache.glob("shard-*.pt"))
            shutil.rmtree(run, ignore_errors=True)
    rss = {(r["source"], r["n_cases"]): r["peak_rss_mb"] for r in runs}
    lo, hi = min(sizes), max(sizes)
    figures = {
        "command": f"python benchmarks/bench_train_memory.py --sizes {args.sizes} --steps {args.steps} "
        f"--workers {args.workers} --out DIR",
        "preset": "tiny-cpu",
        "overrides": _overrides(args.steps),
        "case_sources": SOURCES,
        "runs": runs,
        "rss_ratio": {
            s: round(rss[(s, hi)] / rss[(s, lo)], 3) for s in ("memory", "cache") if (s, lo) in rss and (s, hi) in rss
        },
        "goal": f"cache rss_ratio ({lo} -> {hi} cases) <= 1.2",
    }
    figures["goal_met"] = figures["rss_ratio"].get("cache", 99.0) <= 1.2
    path = write_result(args.results, "train_memory", figures)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
