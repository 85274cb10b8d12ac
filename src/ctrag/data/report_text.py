"""What a report must be before anything reads it: one size limit and one set of text checks for every entry point.

``ctrag ingest`` (corpus reports), ``ctrag search`` / ``ctrag generate`` (a query report) and the Python pipelines
(:meth:`ctrag.generation.pipeline.GenerationPipeline.check_inputs`) all accept report text from users. They share
:data:`MAX_REPORT_BYTES` and :func:`check_report_text`, so a report that ingest refuses is not quietly accepted as a
query (and the other way round). The limit is far above any real report (CT-RATE reports are below 8 kB) and far
below what would only be noise to a text encoder that reads a few hundred tokens; encoders warn when they cut a
text that passed this check (:mod:`ctrag.encoders.text`).
"""

from __future__ import annotations

from ctrag.errors import InvalidInputError

MAX_REPORT_BYTES = 32_768
"""Largest accepted report (findings + impression, UTF-8 bytes), everywhere a report enters ctrag."""


def report_size(text: str) -> int:
    """Size of ``text`` in UTF-8 bytes (the unit of :data:`MAX_REPORT_BYTES`)."""
    return len(text.encode("utf-8"))


def check_report_text(
    text: object,
    *,
    what: str = "report",
    max_bytes: int = MAX_REPORT_BYTES,
    allow_empty: bool = False,
    size_hint: str = "",
) -> str:
    """Return ``text`` when it is usable report text; raise ``InvalidInputError`` saying what is wrong otherwise.

    Refused: a non-string, empty or whitespace-only text (unless ``allow_empty``), text with NUL bytes (binary
    data read as text), and text over ``max_bytes`` UTF-8 bytes. ``what`` names the input in the message
    (``"--report-file notes.txt"``, ``"report"``); ``size_hint`` is appended to the size message (how the caller
    can raise its limit, where it can).
    """
    if max_bytes <= 0:
        raise InvalidInputError(f"the report size limit must be positive, got {max_bytes}")
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be text (str), got {type(text).__name__}")
    if not allow_empty and not text.strip():
        raise InvalidInputError(f"{what} is empty; give the radiology report text")
    if "\x00" in text:
        raise InvalidInputError(f"{what} contains NUL bytes (binary data, not report text?)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: JSON "\ud800" or a mis-decoded file
        raise InvalidInputError(f"{what} is not valid Unicode text ({exc.reason} at character {exc.start})") from None
    size = report_size(text)
    if size > max_bytes:
        raise InvalidInputError(
            f"{what} is {size} bytes, over the limit of {max_bytes} bytes (findings + impression, UTF-8); "
            "a radiology report is far shorter, and the text encoder would read only its first few hundred tokens"
            + size_hint
        )
    return text
