"""What a service is started with (``ServeConfig``), checked before anything binds a port or loads a model."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from ctrag.errors import ConfigError

LOOPBACK_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
MIN_TOKEN_CHARS = 16
"""A shorter token is guessable by brute force over the network; refused."""


def is_loopback(host: str) -> bool:
    """True when ``host`` can only be reached from this machine (127.0.0.0/8, ::1, ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """A running service's settings.

    ``out_dir`` holds job outputs and uploads. ``token``: when set, every ``/api`` request must carry it
    (``Authorization: Bearer <token>``); a bind beyond loopback refuses to start without one. ``allowed_hosts``:
    ``Host`` headers accepted (defaults to the loopback names for a loopback bind, which stops DNS-rebinding pages
    from reaching the service; ``("*",)`` accepts any). ``max_queued``: jobs waiting or running before new ones get
    HTTP 429. ``max_upload_bytes``: largest accepted upload. ``keep_jobs``: finished jobs remembered (their files
    stay on disk).
    """

    index_dir: Path
    weights_dir: Path | None
    out_dir: Path
    corpus_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_queued: int = 4
    max_upload_bytes: int = 64 * 1024 * 1024
    keep_jobs: int = 200
    device: str | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {self.port}")
        if self.max_queued < 1:
            raise ConfigError(f"max_queued must be >= 1, got {self.max_queued}")
        if self.max_upload_bytes < 1024:
            raise ConfigError(f"max_upload_bytes must be >= 1024, got {self.max_upload_bytes}")
        if self.keep_jobs < self.max_queued:
            raise ConfigError(f"keep_jobs ({self.keep_jobs}) must be >= max_queued ({self.max_queued})")
        if self.token is not None:
            if len(self.token) < MIN_TOKEN_CHARS:
                raise ConfigError(f"the access token must have at least {MIN_TOKEN_CHARS} characters")
            if not self.token.isprintable() or any(c.isspace() for c in self.token):
                raise ConfigError("the access token must be printable and contain no spaces")
        if not is_loopback(self.host) and self.token is None:
            raise ConfigError(
                f"refusing to serve on {self.host} (reachable from other machines) without an access token: "
                "pass --token-file FILE or set CTRAG_SERVE_TOKEN, or bind to 127.0.0.1"
            )
        if not self.index_dir.is_dir():
            raise ConfigError(f"--index {self.index_dir}: not a folder (build one with `ctrag index`)")
        if self.weights_dir is not None and not self.weights_dir.is_dir():
            raise ConfigError(f"--weights {self.weights_dir}: not a folder (train one with `ctrag train`)")
        if self.corpus_dir is not None and not self.corpus_dir.is_dir():
            raise ConfigError(f"--corpus {self.corpus_dir}: not a folder (write one with `ctrag ingest`)")

    @property
    def hosts_accepted(self) -> tuple[str, ...]:
        if self.allowed_hosts:
            return self.allowed_hosts
        return (*LOOPBACK_NAMES, "[::1]") if is_loopback(self.host) else ("*",)

    @property
    def jobs_dir(self) -> Path:
        return self.out_dir / "jobs"

    @property
    def uploads_dir(self) -> Path:
        return self.out_dir / "uploads"


def token_from_env_or_file(token_file: str | os.PathLike[str] | None) -> str | None:
    """The access token from ``token_file`` (first line) or ``CTRAG_SERVE_TOKEN``; None when neither is set.

    Never from a command-line value: a token on the command line is visible to every user in the process list.
    """
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file {path}: cannot read it ({exc})") from exc
        lines = text.strip().splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"--token-file {path} is empty")
        return token
    env = os.environ.get("CTRAG_SERVE_TOKEN")
    return env.strip() if env and env.strip() else None
