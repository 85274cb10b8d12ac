"""``ctrag serve``: refuses unsafe binds, and as a real process serves the API until interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ctrag.cli import main
from tests.serve.conftest import _free_port, serve_index  # noqa: F401  (fixture)


def test_public_bind_without_token_is_refused(serve_index: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    monkeypatch.delenv("CTRAG_SERVE_TOKEN", raising=False)
    assert main(["serve", "--index", str(serve_index), "--host", "0.0.0.0", "--lazy"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve on 0.0.0.0" in err and "Traceback" not in err


def test_bad_folders_are_named(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["serve", "--index", str(tmp_path / "nope"), "--lazy"]) == 2
    assert "--index" in capsys.readouterr().err


def test_serve_process_answers_and_stops_on_sigint(  # type: ignore[no-untyped-def]
    serve_index: Path,  # noqa: F811
    trained_run: Path,
    tmp_path: Path,
) -> None:
    port = _free_port()
    exe = Path(sys.executable).with_name("ctrag")
    command = [str(exe), "serve", "--index", str(serve_index), "--weights", str(trained_run), "--port", str(port),
               "--out", str(tmp_path / "out"), "--threads", "1"]  # fmt: skip
    env = {**os.environ, "CTRAG_SERVE_TOKEN": "", "COLUMNS": "200"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"{url}/api/health", timeout=5)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ctrag serve did not start: {proc.communicate(timeout=10)}")
                time.sleep(0.3)
        assert health.status_code == 200 and health.json()["models_loaded"] is True
        hits = httpx.post(f"{url}/api/search", json={"text": "Pleural effusion.", "k": 2}, timeout=60).json()["hits"]
        assert len(hits) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in out
