"""Sliding-window VAE decoding: large latents are decoded patch-wise and agree with a one-shot decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ctrag.generation.decode import decode_latents
from ctrag.generation.run_folder import load_vae_component
from tests.generation.conftest import tiny_config


def test_sliding_window_decode_matches_direct_decode(trained_run: Path, training_cases) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_config()
    vae, _ = load_vae_component(trained_run / "vae", cfg, "cpu")
    case = next(c for c in training_cases if c.case_id == "lung_pet_ct_dx_A0001")
    image = torch.from_numpy(case.image[:80, :80, :40].copy())[None, None]
    calls = []
    original = vae.decode_stage_2_outputs

    def counting(z: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(z.shape[2:]))
        return original(z)

    vae.decode_stage_2_outputs = counting  # type: ignore[method-assign]
    with torch.no_grad():
        z, _ = vae.encode(image)
        direct = decode_latents(vae, z, 1.0, downsample=4, roi=(80, 80, 40))
        assert calls == [(20, 20, 10)]
        windowed = decode_latents(vae, z, 1.0, downsample=4, roi=(64, 64, 32), overlap=0.4)
    assert len(calls) == 1 + 8 and all(c == (16, 16, 8) for c in calls[1:])  # 2x2x2 overlapping latent windows
    assert windowed.shape == direct.shape == (1, 1, 80, 80, 40)
    # blended patches agree with the one-shot decode (GroupNorm statistics of a window differ from the whole
    # volume's, so they are close, not equal)
    diff_hu = float((windowed - direct).abs().mean()) * 2000.0
    spread_hu = float((direct - direct.mean()).abs().mean()) * 2000.0
    corr = float(np.corrcoef(windowed.flatten().numpy(), direct.flatten().numpy())[0, 1])
    print(
        f"sliding-window vs direct decode: mean |diff| {diff_hu:.1f} HU, signal spread {spread_hu:.1f} HU, r={corr:.3f}"
    )
    assert diff_hu < 0.25 * spread_hu and corr > 0.95
