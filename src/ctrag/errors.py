"""Typed exceptions raised by the library.

Library code raises; only ``ctrag.cli`` turns these into messages and exit codes. Each class says *what kind*
of problem occurred so callers (and the CLI) can react differently, e.g. a leakage error is never retried.
"""

from __future__ import annotations


class CtragError(Exception):
    """Base class of every error ctrag raises on purpose."""

    exit_code: int = 1


class ConfigError(CtragError, ValueError):
    """A configuration file or override does not fit the typed config."""

    exit_code = 2


class InvalidInputError(CtragError, ValueError):
    """User input (text, file, argument) is unusable; the message says which and why."""

    exit_code = 2


class DataValidationError(InvalidInputError):
    """A volume, mask or report failed a medical-imaging sanity check (grid, affine, HU range, ...)."""


class IncompatibleIndexError(CtragError, ValueError):
    """An index was built with another encoder, dimension or split than the caller expects."""

    exit_code = 3


class LeakageError(CtragError, ValueError):
    """Evaluation data would be retrieved from an index that contains it (train/test mixing)."""

    exit_code = 4


class WeightsNotFoundError(CtragError, FileNotFoundError):
    """Pretrained weights were requested from a local path that does not exist or is incomplete."""

    exit_code = 2


class CheckpointMismatchError(CtragError, ValueError):
    """A checkpoint does not match the model config it is being loaded into."""

    exit_code = 3


class MissingDependencyError(CtragError, ImportError):
    """An optional package a requested feature needs is not installed; the message names it and the alternative."""

    exit_code = 2
