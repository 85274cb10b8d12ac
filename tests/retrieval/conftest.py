"""Fixtures shared with the other index/retrieval test folders (defined in tests/index/_support.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load_support() -> ModuleType:
    """tests/index/_support.py, imported once per process under a fixed name (test folders are not packages)."""
    name = "_ctrag_index_test_support"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "index" / "_support.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


support = _load_support()
test_encoder = support.test_encoder
all_cases = support.all_cases
all_embeddings = support.all_embeddings
train_index = support.train_index
support_module = support.support_module
