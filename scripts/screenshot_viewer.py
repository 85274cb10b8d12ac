"""Make the README screenshot of the browser viewer from the `make demo` outputs.

Starts the real ``ctrag serve`` app in-process (uvicorn in a thread, loopback only), drives headless Chromium via
Playwright (paste a report, search, generate, wait until the generated CT and the retrieved case are drawn), writes
a full-page PNG atomically and prints its path. See ``python scripts/screenshot_viewer.py --help``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ctrag.errors import CtragError

READY_TIMEOUT_MS = 600_000
CASE_TIMEOUT_MS = 60_000
NEXT_FRAME_JS = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"


class Failure(Exception):
    """A problem reported as one line on stderr (no traceback), exit status 1."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_browser() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise Failure("Playwright for Python is not installed (pip install playwright)") from None
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise Failure("no `chromium` binary on PATH (e.g. apt-get install chromium)")
    return exe


def start_server(demo_out: Path, port: int) -> tuple[Any, threading.Thread, str]:
    import uvicorn

    from ctrag.serve.app import create_app
    from ctrag.serve.config import ServeConfig
    from ctrag.serve.service import CtragService

    config = ServeConfig(
        index_dir=demo_out / "index",
        weights_dir=demo_out / "generator",
        corpus_dir=demo_out / "corpus",
        out_dir=demo_out / "serve",
        port=port or free_port(),
    )
    service = CtragService(config)
    service.load()
    uv_config = uvicorn.Config(create_app(config, service), host="127.0.0.1", port=config.port, log_level="warning")
    server = uvicorn.Server(uv_config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise Failure(f"the service did not start on 127.0.0.1:{config.port} (port in use?)")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{config.port}"


def wait_ready(page: Any, key: str, timeout_ms: int, problem: str) -> None:
    """Wait until ``body.dataset[key]`` leaves its busy states; fail unless it became "ready"."""
    done = f"() => ['ready', 'error', 'cancelled'].includes(document.body.dataset.{key})"
    page.wait_for_function(done, timeout=timeout_ms)
    if page.evaluate(f"document.body.dataset.{key}") != "ready":
        raise Failure(f"{problem}: {page.locator('#error').text_content()!r}")


def capture(url: str, report: str, exe: str, out: Path) -> None:
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, headless=True)
        except Error as exc:
            raise Failure(f"cannot start {exe}: {str(exc).splitlines()[0]}") from None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/", wait_until="load")
            page.wait_for_selector("#legend li", timeout=30_000)
            page.fill("#report", report)
            page.click("#search")
            page.wait_for_selector("#hits tbody tr", timeout=60_000)
            page.click("#generate")
            wait_ready(page, "state", READY_TIMEOUT_MS, "generation did not finish")
            wait_ready(page, "caseState", CASE_TIMEOUT_MS, "the retrieved case did not load")
            page.evaluate(NEXT_FRAME_JS)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.png")  # same folder: os.replace is atomic
            try:
                page.screenshot(path=tmp, full_page=True)
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
        except Error as exc:
            raise Failure(f"in the browser: {str(exc).splitlines()[0]}") from None
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-out", type=Path, default=Path("demo_out"), help="outputs of `make demo`")
    parser.add_argument("--out", type=Path, default=Path("docs/images/viewer.png"), help="PNG to write")
    parser.add_argument("--report-file", type=Path, help="report to paste (default DEMO_OUT/report_0.txt)")
    parser.add_argument("--port", type=int, default=0, help="loopback port (0: a free one)")
    args = parser.parse_args(argv)
    demo_out: Path = args.demo_out
    report_file: Path = args.report_file or demo_out / "report_0.txt"
    try:
        missing = [p for p in ("index", "generator", "corpus") if not (demo_out / p).is_dir()]
        if missing:
            raise Failure(f"{demo_out} lacks {', '.join(missing)}: run `make demo` first")
        if not report_file.is_file():
            raise Failure(f"no report file {report_file}: run `make demo` first (or pass --report-file)")
        report = report_file.read_text(encoding="utf-8").strip()
        exe = find_browser()
        server, thread, url = start_server(demo_out, args.port)
        try:
            capture(url, report, exe, args.out)
        finally:
            server.should_exit = True
            thread.join(30)
    except (Failure, CtragError) as exc:
        print(f"screenshot_viewer: {exc}", file=sys.stderr)
        return 1
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
