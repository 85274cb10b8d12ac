"""Runtime of the classical segmenter on every shipped CT.

Figures per CT: median seconds of ``classical_segment`` over a few repeats, and its ratio to a baseline measured
in the same process on the same volume (one threshold + 3-D connected-component labelling, the cheapest step
any segmenter needs), so the ratio stays comparable across machines.

    python benchmarks/bench_segment.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, write_result

from ctrag.data.nifti import load_volume
from ctrag.segment import classical_segment

CT_DIR = Path(__file__).resolve().parents[1] / "sample_data" / "ct"
CTS = {
    "lung_pet_ct_dx_A0001": CT_DIR / "lowres" / "lung_pet_ct_dx_A0001_ct_128.nii.gz",
    "lung_pet_ct_dx_A0002": CT_DIR / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz",
    "lidc_idri_0314": CT_DIR / "extra" / "lidc_idri_0314_ct_lowres.nii.gz",
    "ts_chest_crop": CT_DIR / "lowres" / "ts_chest_crop_ct_3mm.nii.gz",
    "ts_example": CT_DIR / "ts_example_ct_3mm.nii.gz",
    "ts_example_sm": CT_DIR / "lowres" / "ts_example_ct_sm_3mm.nii.gz",
}


def _median_seconds(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    per_ct = {}
    for name, path in CTS.items():
        vol = load_volume(path)
        baseline = _median_seconds(lambda v=vol: ndi.label(np.asarray(v.array) > -500), args.repeats)
        seconds = _median_seconds(lambda v=vol: classical_segment(v), args.repeats)
        per_ct[name] = {
            "shape": list(vol.shape),
            "spacing_mm": [round(s, 3) for s in vol.spacing],
            "seconds": round(seconds, 3),
            "baseline_label_seconds": round(baseline, 4),
            "ratio_to_baseline": round(seconds / baseline, 1),
        }
        print(f"{name:24s} {vol.shape} {seconds:6.2f} s  ({seconds / baseline:.0f}x baseline)")
    out = write_result(args.out, "segment_classical", {"per_ct": per_ct, "peak_rss_mb": round(peak_rss_mb(), 1)})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
