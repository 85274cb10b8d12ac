"""The one report limit and text check shared by ingest, search, generate and the generation pipeline."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ctrag.data.report_text import MAX_REPORT_BYTES, check_report_text, report_size
from ctrag.errors import InvalidInputError

CTCLIP = Path(__file__).resolve().parents[2] / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier"


@pytest.fixture(scope="module")
def real_reports() -> list[str]:
    with open(CTCLIP / "train.csv", encoding="utf-8", newline="") as fh:
        return [r["report_text"] for r in csv.DictReader(fh)]


def test_every_shipped_ct_rate_report_is_far_below_the_limit(real_reports: list[str]) -> None:
    assert len(real_reports) == 800
    assert all(check_report_text(t) == t for t in real_reports)
    assert max(report_size(t) for t in real_reports) < MAX_REPORT_BYTES // 4


def test_size_is_counted_in_utf8_bytes() -> None:
    assert report_size("Größe") == 7  # two umlauts are two bytes each
    text = "ö" * (MAX_REPORT_BYTES // 2)
    assert check_report_text(text) == text  # exactly at the limit
    with pytest.raises(InvalidInputError, match=rf"is {MAX_REPORT_BYTES + 2} bytes, over the limit"):
        check_report_text(text + "ö")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "query is empty"),
        (" \n\t", "query is empty"),
        ("Nodule.\x00\x00", "query contains NUL bytes"),
        ("Nodule \ud800.", "query is not valid Unicode text \\(surrogates not allowed at character 7\\)"),
        (b"Nodule.", "query must be text \\(str\\), got bytes"),
        (None, "got NoneType"),
    ],
)
def test_bad_text_is_named(text: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        check_report_text(text, what="query")


def test_allow_empty_and_custom_limit(real_reports: list[str]) -> None:
    assert check_report_text("", allow_empty=True) == ""
    with pytest.raises(InvalidInputError, match="over the limit of 100 bytes"):
        check_report_text(real_reports[0], max_bytes=100)
    with pytest.raises(InvalidInputError, match="must be positive"):
        check_report_text("x", max_bytes=0)


def test_ingest_uses_the_same_limit() -> None:
    import inspect

    from ctrag.data.ingest import check_report, ingest, validate_case

    for fn in (check_report, ingest, validate_case):
        assert inspect.signature(fn).parameters["max_report_bytes"].default == MAX_REPORT_BYTES


def test_size_hint_is_added_to_the_size_message_only() -> None:
    hint = "; raise the limit with --max-report-bytes"
    with pytest.raises(InvalidInputError, match=r"over the limit of 10 bytes.*--max-report-bytes$"):
        check_report_text("x" * 11, max_bytes=10, size_hint=hint)
    with pytest.raises(InvalidInputError) as err:
        check_report_text("a\x00", size_hint=hint)
    assert "--max-report-bytes" not in str(err.value)
