"""Cases, corpora, NIfTI I/O, preprocessing transforms, report parsing and label vocabularies.

The names below load on first use (PEP 562): a text search needs ``Case`` but not nibabel, and every millisecond of
import is paid by each cold ``ctrag search``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the checker sees the real names; at run time they load on first use
    from ctrag.data.case import SPLITS, Case, Corpus
    from ctrag.data.labels import ANATOMY_GROUPS, COARSE_LABELS, CT_RATE_LABELS, totalseg_v2_labels
    from ctrag.data.nifti import Volume, load_volume, save_volume

_HOMES = {
    "SPLITS": "ctrag.data.case",
    "Case": "ctrag.data.case",
    "Corpus": "ctrag.data.case",
    "ANATOMY_GROUPS": "ctrag.data.labels",
    "COARSE_LABELS": "ctrag.data.labels",
    "CT_RATE_LABELS": "ctrag.data.labels",
    "totalseg_v2_labels": "ctrag.data.labels",
    "Volume": "ctrag.data.nifti",
    "load_volume": "ctrag.data.nifti",
    "save_volume": "ctrag.data.nifti",
}

__all__ = [  # the same names as _HOMES (tests/test_package.py checks it)
    "ANATOMY_GROUPS",
    "COARSE_LABELS",
    "CT_RATE_LABELS",
    "SPLITS",
    "Case",
    "Corpus",
    "Volume",
    "load_volume",
    "save_volume",
    "totalseg_v2_labels",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ctrag.data' has no attribute {name!r}")
    return getattr(import_module(home), name)
