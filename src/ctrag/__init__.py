"""ctrag: retrieval-augmented CT generation, reporting and case search on one retrieval core.

Heavy submodules (torch models, FAISS, sentence-transformers) are imported lazily by the objects that need them,
so ``import ctrag`` stays cheap. ``ctrag.Pipeline`` is the report -> CT generation pipeline
(:class:`ctrag.generation.pipeline.GenerationPipeline`), loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ctrag._version import __version__

__all__ = ["Pipeline", "__version__"]

if TYPE_CHECKING:
    from ctrag.generation.pipeline import GenerationPipeline as Pipeline


def __getattr__(name: str) -> Any:
    if name == "Pipeline":
        from ctrag.generation.pipeline import GenerationPipeline

        return GenerationPipeline
    raise AttributeError(f"module 'ctrag' has no attribute {name!r}")
