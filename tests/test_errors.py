"""Typed errors: what each class is (so callers can catch it as the builtin it refines) and the exit code the
CLI turns it into, checked end to end through ``ctrag.cli.main``."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrag import errors
from ctrag.cli import main

EXPECTED = {
    errors.CtragError: (Exception, 1),
    errors.ConfigError: (ValueError, 2),
    errors.InvalidInputError: (ValueError, 2),
    errors.DataValidationError: (errors.InvalidInputError, 2),
    errors.IncompatibleIndexError: (ValueError, 3),
    errors.LeakageError: (ValueError, 4),
    errors.WeightsNotFoundError: (FileNotFoundError, 2),
    errors.CheckpointMismatchError: (ValueError, 3),
    errors.MissingDependencyError: (ImportError, 2),
}


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_each_error_refines_a_builtin_and_has_its_exit_code(cls: type[errors.CtragError]) -> None:
    base, code = EXPECTED[cls]
    assert issubclass(cls, errors.CtragError) and issubclass(cls, base)
    assert cls.exit_code == code and cls("message").exit_code == code


def test_every_error_class_is_listed() -> None:
    defined = {v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.CtragError)}
    assert defined == set(EXPECTED)


def test_the_cli_exits_with_the_error_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An InvalidInputError (a corpus folder without a manifest) ends as one error line and exit code 2."""
    capsys.readouterr()
    assert main(["index", str(tmp_path), "--out", str(tmp_path / "i"), "--scorer", "dense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no corpus manifest") and len(err.strip().splitlines()) <= 2
