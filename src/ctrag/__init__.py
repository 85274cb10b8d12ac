"""ctrag: retrieval-augmented CT generation, reporting and case search on one retrieval core.

Heavy submodules (torch models, FAISS, sentence-transformers) are imported lazily by the objects that need them,
so ``import ctrag`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
