"""`import ctrag` stays light (no torch / faiss / transformers) and exposes the pipeline lazily."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_light_and_pipeline_is_lazy() -> None:
    code = (
        "import sys, ctrag\n"
        "mods = ('torch', 'faiss', 'transformers', 'sentence_transformers', 'monai')\n"
        "heavy = [m for m in mods if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from ctrag.generation.pipeline import GenerationPipeline\n"
        "assert ctrag.Pipeline is GenerationPipeline\n"
        "print(ctrag.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.1.0"
