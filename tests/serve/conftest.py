"""Fixtures of the service tests: a hybrid index over real shipped cases, the tiny trained generator, one loaded
``CtragService`` shared by every app a test builds, and a live uvicorn server on loopback.

The generator is the session's short training run (``testsupport.generation_data.trained_run``); the index holds
the training cases that can give a proxy (real CTs, real masks) plus real CT-RATE train reports, with the hybrid
scorer fitted on them, so search results carry label agreement as in a real deployment.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ctrag.data.case import Corpus
from ctrag.serve.app import create_app
from ctrag.serve.config import ServeConfig
from ctrag.serve.service import CtragService

REPORT_ROWS = 80
"""CT-RATE train reports added to the index (enough for the hybrid scorer's label model, cheap to embed)."""
TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="session")
def serve_index(tmp_path_factory: pytest.TempPathFactory, gen_corpus: Corpus, text_encoder: Any) -> Path:
    from ctrag.index.build import build_index

    train = [c for c in gen_corpus if c.split == "train"]
    proxies = [c for c in train if c.has_volume or c.has_mask]
    reports = [c for c in train if c.labels is not None and not (c.has_volume or c.has_mask)][:REPORT_ROWS]
    built = build_index(
        proxies + reports,
        text_encoder,
        scorer="hybrid",
        encoder_spec={"name_or_path": "minilm", "weights": None},
        source={"corpus": str(gen_corpus.root)},
    )
    out = tmp_path_factory.mktemp("serve_index") / "index"
    built.index.save(out)
    return out


@pytest.fixture(scope="session")
def serve_config(
    tmp_path_factory: pytest.TempPathFactory, serve_index: Path, trained_run: Path, gen_corpus: Corpus
) -> ServeConfig:
    assert gen_corpus.root is not None
    return ServeConfig(
        index_dir=serve_index,
        weights_dir=trained_run,
        corpus_dir=gen_corpus.root,
        out_dir=tmp_path_factory.mktemp("serve_out"),
        max_queued=4,
        max_upload_bytes=2 * 1024 * 1024,
    )


@pytest.fixture(scope="session")
def service(serve_config: ServeConfig) -> CtragService:
    svc = CtragService(serve_config)
    svc.load()
    return svc


@pytest.fixture
def make_client(serve_config: ServeConfig, service: CtragService) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**config_changes)``: a TestClient of a fresh app (own job queue) over the shared service."""
    clients: list[TestClient] = []

    def make(**changes: Any) -> TestClient:
        config = dataclasses.replace(serve_config, **changes)
        client = TestClient(create_app(config, service), base_url="http://127.0.0.1")
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def wait_for_job(client: Any, job_id: str, timeout: float = 120.0, headers: dict[str, str] | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/jobs/{job_id}", headers=headers or {}).json()
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish within {timeout} s")


@dataclass
class LiveServer:
    url: str
    config: ServeConfig


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def live_server(serve_config: ServeConfig, service: CtragService) -> Iterator[LiveServer]:
    """The real app under uvicorn on a free loopback port, in a thread (stopped at the end of the module)."""
    import uvicorn

    config = dataclasses.replace(serve_config, port=_free_port())
    server = uvicorn.Server(
        uvicorn.Config(create_app(config, service), host="127.0.0.1", port=config.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield LiveServer(url=f"http://127.0.0.1:{config.port}", config=config)
    server.should_exit = True
    thread.join(30)
