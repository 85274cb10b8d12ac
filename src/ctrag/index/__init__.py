"""Case indexes: FAISS (flat / HNSW / IVF-PQ) + vectors + case metadata, saved atomically with the encoder's
fingerprint; ``build_index`` is the one recipe (embed -> index -> scorer). FAISS itself is imported only when an
index is built or loaded."""

from ctrag.index.build import BuiltIndex, build_index, build_text_index, embed_texts, select_cases
from ctrag.index.case_index import CaseIndex
from ctrag.index.config import INDEX_KINDS, HNSWConfig, IndexConfig, IVFPQConfig

__all__ = [
    "INDEX_KINDS",
    "BuiltIndex",
    "CaseIndex",
    "HNSWConfig",
    "IVFPQConfig",
    "IndexConfig",
    "build_index",
    "build_text_index",
    "embed_texts",
    "select_cases",
]
