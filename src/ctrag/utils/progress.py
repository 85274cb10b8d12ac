"""The one progress-callback type of the library.

Long work (ingest, embedding, index building, scorer fitting, training, sampling, evaluation) reports through
``progress(stage, done, total)``: ``stage`` is a short, stable label of what is running (``"embed reports"``,
``"sampling"``, ``"epochs"``), so one callback can drive one bar per stage. The library never draws bars itself;
the CLI (rich) and the service (job state) supply the callback.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``, called as work advances; ``done == total`` when a stage ends."""
