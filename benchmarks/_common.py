"""Helpers every benchmark uses: machine description and atomic JSON output.

Benchmarks compare *ratios* against a baseline measured in the same process, so results stay meaningful across
machines; the machine block records where the absolute numbers came from.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch

from ctrag.utils.atomic import atomic_write_text


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            info["mem_total_kb"] = int(fh.readline().split()[1])
    except OSError:
        pass
    return info


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def latency_ms(seconds: list[float]) -> dict[str, float]:
    """n, p50, p99 and mean of per-request wall times, in milliseconds (the latency block every benchmark writes)."""
    import numpy as np

    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "n": len(seconds),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def write_result(out_dir: str | Path, name: str, figures: dict[str, Any]) -> Path:
    out = Path(out_dir) / f"{name}.json"
    payload = {
        "benchmark": name,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        **figures,
    }
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    return out
