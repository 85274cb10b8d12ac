"""Service settings and request checks: what the service refuses to start with, and which names reach files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrag.errors import ConfigError, InvalidInputError
from ctrag.serve.config import ServeConfig, is_loopback, token_from_env_or_file
from ctrag.serve.security import CASE_ID, JOB_ID, check_name, token_matches

TOKEN = "a-long-enough-token-1234"


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    for name in ("index", "weights", "corpus"):
        (tmp_path / name).mkdir()
    return {"index_dir": tmp_path / "index", "weights_dir": tmp_path / "weights", "out_dir": tmp_path / "out"}


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_detection(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_non_loopback_bind_needs_a_token(folders: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"refusing to serve on 0\.0\.0\.0 .* without an access token"):
        ServeConfig(**folders, host="0.0.0.0")
    config = ServeConfig(**folders, host="0.0.0.0", token=TOKEN)
    assert config.hosts_accepted == ("*",)


def test_loopback_accepts_only_loopback_host_headers(folders: dict[str, Path]) -> None:
    assert set(ServeConfig(**folders).hosts_accepted) == {"localhost", "127.0.0.1", "::1", "[::1]"}
    assert ServeConfig(**folders, allowed_hosts=("ct.lab",)).hosts_accepted == ("ct.lab",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"token": "short"}, "at least 16 characters"),
        ({"token": "has a space in the middle"}, "no spaces"),
        ({"port": 0}, "--port must be in 1..65535"),
        ({"max_queued": 0}, "max_queued must be >= 1"),
        ({"max_upload_bytes": 10}, "max_upload_bytes must be >= 1024"),
        ({"keep_jobs": 1, "max_queued": 4}, "keep_jobs"),
        ({"index_dir": Path("/nonexistent/index")}, "--index /nonexistent/index: not a folder"),
        ({"weights_dir": Path("/nonexistent/w")}, "--weights /nonexistent/w: not a folder"),
        ({"corpus_dir": Path("/nonexistent/c")}, "--corpus /nonexistent/c: not a folder"),
    ],
)
def test_bad_settings_are_named(folders: dict[str, Path], changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServeConfig(**{**folders, **changes})


def test_token_comes_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTRAG_SERVE_TOKEN", raising=False)
    assert token_from_env_or_file(None) is None
    monkeypatch.setenv("CTRAG_SERVE_TOKEN", f" {TOKEN}\n")
    assert token_from_env_or_file(None) == TOKEN
    file = tmp_path / "token"
    file.write_text(f"{TOKEN}-file\nignored second line\n", encoding="utf-8")
    assert token_from_env_or_file(file) == f"{TOKEN}-file"
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is empty"):
        token_from_env_or_file(tmp_path / "empty")
    with pytest.raises(ConfigError, match="cannot read it"):
        token_from_env_or_file(tmp_path / "missing")


def test_token_check_is_bearer_only() -> None:
    assert token_matches(None, None)
    assert token_matches(TOKEN, f"Bearer {TOKEN}") and token_matches(TOKEN, f"bearer {TOKEN}")
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ", f"Bearer {TOKEN[:-1]}"):
        assert not token_matches(TOKEN, header), header


@pytest.mark.parametrize(
    "value", ["..", "../x", "a/../b", "/etc/passwd", ".hidden", "a\x00b", "a%2Fb", "a b", "", "x" * 129, "é"]
)
def test_names_outside_the_pattern_are_refused(value: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid case id"):
        check_name(value, CASE_ID, "case id")


def test_valid_names_pass() -> None:
    for case_id in ("ctclip_train_38", "LIDC-IDRI-0314", "lung_pet_ct_dx_A0001", "a.b"):
        assert check_name(case_id, CASE_ID, "case id") == case_id
    with pytest.raises(InvalidInputError):
        check_name("short", JOB_ID, "job id")
