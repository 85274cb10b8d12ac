"""CLI commands: placeholder module, filled in by the issue that owns it."""

from __future__ import annotations

from ctrag.cli._app import app, evaluate_app, train_app  # noqa: F401
