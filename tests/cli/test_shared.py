"""``ctrag.cli._shared``: the one report-file reader of ``search`` and ``generate`` and its checks, in-process
through ``ctrag.cli.main`` on a real CT-RATE report (each bad file ends in one error line and exit code 2)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ctrag.cli import _shared, main
from ctrag.data.report_text import MAX_REPORT_BYTES
from ctrag.errors import InvalidInputError

CT_RATE_VAL = Path(__file__).resolve().parents[2] / "sample_data" / "ct_rate_nc_sa" / "ct_clip_text_classifier"


@pytest.fixture(scope="module")
def real_report() -> str:
    with open(CT_RATE_VAL / "val.csv", encoding="utf-8", newline="") as fh:
        return next(csv.DictReader(fh))["report_text"]


def _bad_files(tmp: Path, report: str) -> dict[str, tuple[Path, str]]:
    """Report files a new user might pass, with the words the error must contain."""
    latin1 = tmp / "latin1.txt"
    latin1.write_bytes(("Pleural effusion. Kontrastmittel: nein, Größe 3 cm. " + report).encode("latin-1", "replace"))
    huge = tmp / "huge.txt"
    huge.write_text((report + "\n") * (240_000 // len(report) + 1), encoding="utf-8")  # about 240 kB
    empty = tmp / "empty.txt"
    empty.write_text(" \n\t\n", encoding="utf-8")
    binary = tmp / "binary.txt"
    binary.write_bytes(report.encode() + b"\x00\x00")
    folder = tmp / "a_folder"
    folder.mkdir()
    return {
        "not-utf8": (latin1, "not valid UTF-8"),
        "240kB": (huge, f"over the limit of {MAX_REPORT_BYTES} bytes"),
        "empty": (empty, "is empty"),
        "nul": (binary, "NUL"),
        "folder": (folder, "is a folder"),
        "missing": (tmp / "none.txt", "does not exist"),
    }


def test_read_report_file_refuses_a_huge_file_before_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "volume.nii.gz"
    with open(path, "wb") as fh:  # a sparse 2 GB file: reading it whole would take 2 GB of memory
        fh.truncate(2 * 1024**3)
    from ctrag.data import readers

    def no_read(*_: object) -> str:
        raise AssertionError("the file was read before its size was checked")

    monkeypatch.setattr(readers, "read_text_utf8", no_read)
    with pytest.raises(InvalidInputError, match="over the limit"):
        _shared.read_report_file(path)


def test_read_report_file_accepts_a_report_at_the_limit_with_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "limit.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"a" * MAX_REPORT_BYTES)
    assert len(_shared.read_report_file(path)) == MAX_REPORT_BYTES


@pytest.mark.parametrize("kind", ["not-utf8", "240kB", "empty", "nul", "folder", "missing"])
def test_read_report_file_refuses_bad_files(tmp_path: Path, real_report: str, kind: str) -> None:
    path, words = _bad_files(tmp_path, real_report)[kind]
    with pytest.raises(InvalidInputError, match=words) as err:
        _shared.read_report_file(path)
    assert str(err.value).startswith(f"--report-file {path}")


def test_read_report_file_reads_a_real_report(tmp_path: Path, real_report: str) -> None:
    path = tmp_path / "report.txt"
    path.write_bytes(b"\xef\xbb\xbf" + real_report.encode("utf-8"))  # a BOM from a Windows editor is fine
    assert _shared.read_report_file(path) == real_report


@pytest.mark.parametrize("kind", ["not-utf8", "240kB", "empty", "nul", "folder", "missing"])
@pytest.mark.parametrize("command", ["generate", "search"])
def test_bad_report_file_is_one_error_line_for_both_commands(
    tmp_path: Path, real_report: str, capsys: pytest.CaptureFixture[str], command: str, kind: str
) -> None:
    """The report is checked before any model or index is opened, so no weights or index are needed here."""
    path, words = _bad_files(tmp_path, real_report)[kind]
    if command == "generate":
        argv = ["generate", "--report-file", str(path), "--weights", str(tmp_path / "run"), "-o", str(tmp_path / "o")]
    else:
        argv = ["search", "--report-file", str(path), "--index", str(tmp_path / "index")]
    capsys.readouterr()
    assert main(argv) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and words in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["generate", "search"])
def test_inline_report_over_the_limit_is_refused(
    tmp_path: Path, real_report: str, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    text = "x" * (MAX_REPORT_BYTES + 1)
    if command == "generate":
        argv = ["generate", "--report", text, "--weights", str(tmp_path / "run"), "-o", str(tmp_path / "o")]
    else:
        argv = ["search", text, "--index", str(tmp_path / "index")]
    capsys.readouterr()
    assert main(argv) == 2
    assert f"over the limit of {MAX_REPORT_BYTES} bytes" in " ".join(capsys.readouterr().err.split())


def test_split_list_and_threads() -> None:
    assert _shared.split_list(["train", "val,test"], ["train"]) == ["train", "val", "test"]
    assert _shared.split_list(None, ["train"]) == ["train"]
    with pytest.raises(InvalidInputError, match="--threads must be >= 1"):
        _shared.set_threads(0)
    assert _shared.command_line("search", "two words", None, "") == "ctrag search 'two words'"
