"""``ctrag`` command line. ``main(argv)`` is importable and testable in-process (no ``sys.argv`` reads)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import typer

from ctrag.cli import _app
from ctrag.cli._app import app, err_console
from ctrag.errors import CtragError

# Command modules register themselves on the apps when imported; one module per command group.
from ctrag.cli import cmd_ingest  # noqa: F401  isort: skip
from ctrag.cli import cmd_index  # noqa: F401  isort: skip
from ctrag.cli import cmd_search  # noqa: F401  isort: skip
from ctrag.cli import cmd_train  # noqa: F401  isort: skip
from ctrag.cli import cmd_generate  # noqa: F401  isort: skip
from ctrag.cli import cmd_segment  # noqa: F401  isort: skip
from ctrag.cli import cmd_evaluate  # noqa: F401  isort: skip
from ctrag.cli import cmd_encoders  # noqa: F401  isort: skip
from ctrag.cli import cmd_serve  # noqa: F401  isort: skip
from ctrag.cli import cmd_sentences  # noqa: F401  isort: skip
from ctrag.cli import cmd_labels  # noqa: F401  isort: skip
from ctrag.cli import cmd_report  # noqa: F401  isort: skip
from ctrag.cli import cmd_curate  # noqa: F401  isort: skip
from ctrag.cli import cmd_pair  # noqa: F401  isort: skip
from ctrag.cli import cmd_train_reporter  # noqa: F401  isort: skip

try:  # typer >= 0.20 vendors click as typer._click; older releases use the click package itself
    from typer._click import exceptions as _click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as _click_exceptions  # type: ignore[no-redef]

_EXIT = (typer.Exit, _click_exceptions.Exit) if hasattr(_click_exceptions, "Exit") else (typer.Exit,)
_ABORT = (typer.Abort, _click_exceptions.Abort) if hasattr(_click_exceptions, "Abort") else (typer.Abort,)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting so tests can call it directly."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # model-loading bars would drown our own progress
    logging.basicConfig(
        level=os.environ.get("CTRAG_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        result = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except CtragError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        return exc.exit_code
    except _EXIT as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except _click_exceptions.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except _ABORT:
        err_console.print("aborted")
        return 130
    except FileNotFoundError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    return int(result) if isinstance(result, int) else 0


def entrypoint() -> None:
    raise SystemExit(main())


__all__ = ["_app", "app", "entrypoint", "main", "typer"]
