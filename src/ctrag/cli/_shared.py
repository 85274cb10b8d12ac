"""Option types and helpers shared by several command groups, stated once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ctrag.errors import InvalidInputError

if TYPE_CHECKING:
    from ctrag.encoders.base import Encoder


import shlex

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="Preset name (tiny-cpu, text2ct-512) or YAML file.")]


SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config field, e.g. --set train_vae.steps_per_epoch=50 (repeatable)."),
]


CorpusOpt = Annotated[Path, typer.Option("--corpus", help="Corpus folder (manifest.jsonl from `ctrag ingest`).")]


DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: from the config).")]


ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="torch CPU threads (default: torch's choice).")]


ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise InvalidInputError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def command_line(*parts: Any) -> str:
    return "ctrag " + " ".join(shlex.quote(str(p)) for p in parts if p is not None and p != "")


def load_corpus(corpus: Path) -> Any:
    from ctrag.data.case import Corpus

    return Corpus.load(corpus)


DEFAULT_ENCODER = "minilm"


#: ``--scorer auto`` means hybrid when ``ctrag.retrieval.hybrid`` is installed, else dense. Set this to "dense"
#: (or "hybrid") to pin the default.
DEFAULT_SCORER = "auto"


SCORERS = ("auto", "hybrid", "dense")


def load_encoder(name_or_path: str, weights: str | None, device: str) -> Encoder:
    """The encoder factory, imported lazily (tests replace this function with a small adapter)."""
    from ctrag.encoders.factory import create_encoder

    made: Any = create_encoder(name_or_path, weights=weights, device=device)
    return made[0] if isinstance(made, tuple) else made


def read_report_file(path: Path, *, option: str = "--report-file") -> str:
    """The report text in ``path``, checked like every report ctrag accepts (one reader for search and generate).

    A missing file, a folder, a file that is not UTF-8, an empty file, NUL bytes or a report over
    :data:`ctrag.data.report_text.MAX_REPORT_BYTES` end in an ``InvalidInputError`` that names ``option`` and
    the file, so the CLI prints one line and exits non-zero instead of a traceback.
    """
    from ctrag.data.readers import read_text_utf8
    from ctrag.data.report_text import MAX_REPORT_BYTES

    if path.is_dir():
        raise InvalidInputError(f"{option} {path} is a folder; give the text file that holds the report")
    if not path.is_file():
        raise InvalidInputError(f"{option} {path} does not exist")
    # Refuse a huge file (a CT passed by mistake, a log) before reading it whole into memory; 3 bytes for a BOM.
    size = path.stat().st_size
    if size > MAX_REPORT_BYTES + 3:
        raise InvalidInputError(
            f"{option} {path} is {size} bytes, over the limit of {MAX_REPORT_BYTES} bytes for a report "
            "(findings + impression, UTF-8); is it the right file?"
        )
    try:
        text = read_text_utf8(path)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{option} {exc}") from None
    return check_report(text, what=f"{option} {path}")


def check_report(text: str, *, what: str) -> str:
    """``text`` when it passes :func:`ctrag.data.report_text.check_report_text` (same limit as ``ctrag ingest``)."""
    from ctrag.data.report_text import check_report_text

    return check_report_text(text, what=what)


def split_list(values: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """Repeated options and comma lists both work: ``--splits train --splits val`` or ``--splits train,val``."""
    out = [part.strip() for v in (values or []) for part in v.split(",") if part.strip()]
    return out or list(default)
