"""One progress-bar factory for every command, so bars look alike and go to stderr (stdout stays parseable)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ctrag.cli._app import err_console
from ctrag.utils.progress import ProgressFn


@contextmanager
def progress_bar(enabled: bool, *, title: str | None = None, detail: bool = False) -> Iterator[Progress]:
    """A transient rich bar: ``title`` replaces the task description column; ``detail`` adds it after the counts."""
    columns: list[ProgressColumn] = [TextColumn(f"[bold]{title}[/]" if title else "[bold]{task.description}[/]")]
    columns += [BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if detail:
        columns.append(TextColumn("{task.description}"))
    bar = Progress(*columns, console=err_console, disable=not enabled, transient=True)
    with bar:
        yield bar


@contextmanager
def stage_progress(enabled: bool, description: str) -> Iterator[ProgressFn | None]:
    """A persistent bar per stage, driven by the library's ``progress(stage, done, total)``; ``None`` when disabled."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        yield stage_callback(bar, prefix=f"{description}: ")


def stage_callback(bar: Progress, prefix: str = "") -> ProgressFn:
    """A ``ProgressFn`` that gives each stage its own task on ``bar`` (created on the stage's first report)."""
    tasks: dict[str, TaskID] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(f"{prefix}{stage}", total=total)
        bar.update(tasks[stage], completed=done, total=total)

    return update
