"""Results as strict JSON: NaN and infinities become ``null``, NumPy scalars become Python numbers.

Metrics are NaN where they are not defined (no positive case for an AUC, no structure for a Dice), and
``json.dumps`` would write those as the non-standard ``NaN``, which strict readers refuse. The generation
tables, ``ctrag evaluate reports`` and the report-evaluation script all write their results through this one
function, so it lives beside the other small shared helpers rather than in any one of them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """Recursively replace NaN/inf by None and numpy scalars by Python ones (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return _clean(obj)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
