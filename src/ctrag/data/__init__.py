"""Cases, corpora, NIfTI I/O, preprocessing transforms, report parsing and label vocabularies."""

from ctrag.data.case import SPLITS, Case, Corpus
from ctrag.data.labels import ANATOMY_GROUPS, COARSE_LABELS, CT_RATE_LABELS, totalseg_v2_labels
from ctrag.data.nifti import Volume, load_volume, save_volume

__all__ = [
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
