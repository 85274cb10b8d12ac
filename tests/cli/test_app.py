"""The CLI registers every command module and turns usage errors into exit codes, not tracebacks."""

from __future__ import annotations

import pytest

from ctrag.cli import main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], ["ingest", "index", "search", "segment", "generate", "train", "evaluate"]),
        (["train", "--help"], ["encoder", "vae", "diffusion", "controlnet", "classifier"]),
        (["evaluate", "--help"], ["retrieval", "generation", "reports"]),
    ],
)
def test_every_command_is_registered(argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    missing = [name for name in expected if name not in out]
    assert not missing, f"commands missing from `ctrag {' '.join(argv)}`: {missing}"


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "no-such-command" in captured.err
