"""The ControlNet steers anatomy: generations agree more with the proxy mask with control than without.

Measured on the session's short training run (real CTs, coarse masks from ``ctrag.segment``) for real CT-RATE
validation reports, with two proxies each: the retrieved nearest training case and the real CT-RATE
TotalSegmentator chest mask given as ``mask=``. The text-only volume (same seed, same grid) is compared with the
same proxy. Body: Dice of ``ctrag.segment``'s body outline; lungs: ``air_in_body`` (generated voxels below -400 HU
inside the proxy's body vs the proxy's lungs), because the classical lung finder needs closed chest walls that
such short training does not produce (see ``ctrag.evaluation.metrics.controllability``). The demo's longer
training is reported by ``scripts/demo_generation.sh`` with the segmenter's own lung Dice as well.
"""

from __future__ import annotations

import numpy as np

from ctrag.evaluation.metrics.controllability import control_agreement
from tests.generation.conftest import SAMPLE

CTRATE_MASK = SAMPLE / "ct_rate_nc_sa" / "ragtext2ct_ctrate_chest_mask_total.nii.gz"


def test_dice_with_controlnet_beats_text_only(pipeline, val_reports) -> None:  # type: ignore[no-untyped-def]
    keys = ("body", "air_in_body")
    scores: dict[str, dict[str, list[float]]] = {name: {k: [] for k in keys} for name in ("with", "without")}
    for report in val_reports[:2]:
        for proxy in ("retrieved", "ctrate-mask"):
            kwargs = {"strategy": "nearest"} if proxy == "retrieved" else {"mask": CTRATE_MASK}
            guided = pipeline(report, seed=0, **kwargs)
            assert guided.mask is not None
            baseline = pipeline(report, strategy="none", seed=0, grid=guided.affine)
            assert np.array_equal(baseline.affine, guided.affine) and baseline.mask is None
            for name, result in (("with", guided), ("without", baseline)):
                dice = control_agreement(result.volume, result.affine, guided.mask)
                for key in scores[name]:
                    scores[name][key].append(dice[key])
    means = {k: (float(np.nanmean(scores["with"][k])), float(np.nanmean(scores["without"][k]))) for k in scores["with"]}
    print("Dice with / without ControlNet:", means)
    assert means["body"][0] > means["body"][1]
    assert means["air_in_body"][0] > means["air_in_body"][1] + 0.05
