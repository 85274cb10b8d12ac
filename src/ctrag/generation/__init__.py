"""Report-to-CT generation: MONAI VAE + text-conditioned diffusion UNet + ControlNet on retrieved anatomy.

Main entry points (imported lazily, so ``import ctrag.generation`` does not load torch or MONAI):

- ``GenerationPipeline`` (``pipeline.py``): ``GenerationPipeline.from_pretrained(run_dir,
  index_dir=...)`` or ``.from_config("tiny-cpu", weights=run_dir, index_dir=...)``, then
  ``pipe(report, strategy="nearest", seed=0, steps=30, cfg=5.0, control_scale=1.0)``.
  ``pipe.generate_batch(reports, seeds)`` samples many reports in one batch (per-report seeds and proxies).
- ``generate_reports`` / ``read_report_table`` (``batch.py``): a CSV of reports -> resumable ``OUT/<id>/`` folders.
- ``GenerationResult`` / ``save_result`` (``output.py``): the result; NIfTI + provenance + PNG written as one unit.
- ``train_vae`` / ``train_diffusion`` / ``train_controlnet`` (``training/``): resumable training into a run folder.
- ``load_generator_config`` / ``GeneratorConfig`` (``config.py``): the ``vae``/``diffusion``/``controlnet``/
  ``sampler``/``train_*`` sections of a preset, and its image space (``preprocess``).
- ``import_external_weights`` (``run_folder.py``): MAISI / Text2CT checkpoint files -> run folder.
- ``proxy.py``: the retrieve -> mask -> generation-grid trip that gives the ControlNet its anatomy.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "GenerationPipeline": "ctrag.generation.pipeline",
    "GenerationResult": "ctrag.generation.output",
    "save_result": "ctrag.generation.output",
    "generate_reports": "ctrag.generation.batch",
    "read_report_table": "ctrag.generation.batch",
    "train_vae": "ctrag.generation.training",
    "train_diffusion": "ctrag.generation.training",
    "train_controlnet": "ctrag.generation.training",
    "GeneratorConfig": "ctrag.generation.config",
    "load_generator_config": "ctrag.generation.config",
    "RectifiedFlowSampler": "ctrag.generation.sampler",
    "controlnet_from_unet": "ctrag.generation.controlnet",
    "import_external_weights": "ctrag.generation.run_folder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ctrag.generation' has no attribute {name!r}")
