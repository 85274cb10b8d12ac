"""The CLI's progress adapters: one rich task per library stage, driven by ``progress(stage, done, total)``."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from ctrag.cli._progress import progress_bar, stage_callback, stage_progress


def test_stage_callback_gives_each_stage_its_own_task() -> None:
    bar = Progress(console=Console(file=io.StringIO()), disable=True)
    update = stage_callback(bar, prefix="index: ")
    update("embed reports", 0, 4)
    update("embed reports", 4, 4)
    update("fit hybrid", 1, 3)
    tasks = {t.description: t for t in bar.tasks}
    assert set(tasks) == {"index: embed reports", "index: fit hybrid"}
    assert (tasks["index: embed reports"].completed, tasks["index: embed reports"].total) == (4, 4)
    assert (tasks["index: fit hybrid"].completed, tasks["index: fit hybrid"].total) == (1, 3)
    assert tasks["index: embed reports"].finished and not tasks["index: fit hybrid"].finished


def test_disabled_progress_gives_no_callback() -> None:
    with stage_progress(False, "train") as callback:
        assert callback is None
    with progress_bar(False, title="ingest") as bar:
        task = bar.add_task("", total=2)
        bar.update(task, completed=2)
        assert bar.tasks[0].finished


def test_enabled_stage_progress_draws_on_stderr(capsys) -> None:  # type: ignore[no-untyped-def]
    """Bars go to stderr (stdout stays parseable, e.g. for --json), one line per stage, prefixed."""
    with stage_progress(True, "sampling") as callback:
        assert callback is not None
        for step in range(1, 4):
            callback("steps", step, 3)
    captured = capsys.readouterr()
    assert captured.out == "" and "sampling: steps" in captured.err and "3/3" in captured.err
