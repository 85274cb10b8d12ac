"""One progress-bar factory for every command, so bars look alike and go to stderr (stdout stays parseable)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

from ctrag.cli._app import err_console


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
