"""The Ray engine of ``ctrag index --engine ray``: embed reports in checksummed, resumable shards on Ray workers.

Why Ray: embedding is the slow step of an index build (5–9 reports/s per 2 cores with MiniLM), and it is
embarrassingly parallel. Ray schedules the work over the cores of one machine or many, restarts workers that
die, and moves the vectors back; nothing here re-implements scheduling or transport.

Why shards on disk: a job over millions of reports runs for hours and will be interrupted (a node lost, a
Ctrl-C, a pre-empted machine). The texts are cut, in their corpus order, into shards of ``shard_size`` rows; a
shard is identified by its position *and* the sha256 of its texts. Each finished shard becomes two files in the
work folder, written atomically (temp file + rename, :mod:`ctrag.utils.atomic`)::

    WORK_DIR/
      job.json                 what the last run was asked to do (rows, shard size, encoder)
      shards/shard-00000.npy   (rows, dim) float32 vectors
      shards/shard-00000.json  sidecar: rows, sha256 of the texts, sha256 of the vectors, encoder fingerprint,
                               the run that embedded it (run_id), when, where and how long it took

The sidecar is written after the vectors, so it is the commit mark: a rerun *reuses* a shard whose sidecar
matches (same text hash, same encoder fingerprint, vectors present with the recorded checksum and shape) and
*redoes* one that is missing, corrupt or made by another encoder. A killed job therefore resumes without
re-embedding finished shards.

Why the driver writes the files: the vectors come back through Ray's object store, so workers on other machines
need no shared filesystem; the driver checks each shard's checksum (computed on the worker) on arrival.

Why the final index is the single-process one: this module only replaces the embedding step. It plugs into
:func:`ctrag.index.build.build_index` as its ``embed`` engine; cases, index structure and scorer come from the
same recipe. Each worker embeds its shard with :func:`ctrag.encoders.cache.embed_in_chunks` in chunks of
``batch_size`` starting at the shard's first row, so with ``shard_size`` a multiple of ``batch_size`` the encoder
sees exactly the batches the local engine gives it; vectors agree bit for bit or within float round-off (thread
counts differ between processes).

Workers build their encoder themselves from a picklable *builder* (:class:`EncoderSpec`: the index's encoder
spec, rebuilt with :func:`ctrag.encoders.factory.create_encoder`), and each reports its fingerprint before any
shard is sent: a node with other weights is refused instead of silently mixing vectors.

Ray is optional (``pip install 'ctrag[ray]'``); importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctrag.errors import CtragError, DataValidationError, InvalidInputError, MissingDependencyError
from ctrag.utils.atomic import atomic_path, atomic_write_text
from ctrag.utils.hashing import sha256_text
from ctrag.utils.progress import ProgressFn

if TYPE_CHECKING:
    from ctrag.encoders.base import Encoder

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
SHARD_FORMAT = "ctrag-embed-shard"
SHARD_FORMAT_VERSION = 1
JOB_NAME = "job.json"
SHARDS_DIR = "shards"
SHARD_STAGE = "embed shards"
ROW_STAGE = "embed reports"  # the local engine's stage name, so the CLI shows the same bar for both engines
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.(npy|json)$")
#: Seconds to wait for a TCP connection to a cluster address before calling it unreachable (``ray.init`` itself
#: retries for minutes and then exits the process).
CONNECT_TIMEOUT_S = 5.0

EncoderBuilder = Callable[[], "Encoder"]
"""A picklable zero-argument callable that builds the encoder inside a Ray worker."""


@dataclass(frozen=True)
class EncoderSpec:
    """The encoder of an index as :func:`ctrag.encoders.factory.create_encoder` arguments: a picklable builder."""

    name_or_path: str
    weights: str | None = None
    device: str = "cpu"

    def __call__(self) -> Encoder:
        from ctrag.encoders.factory import create_encoder

        made: Any = create_encoder(self.name_or_path, weights=self.weights, device=self.device)
        return made[0] if isinstance(made, tuple) else made


@dataclass(frozen=True)
class RayEmbedConfig:
    """How the job runs. ``workers``: Ray actors (one encoder each); None = 2 for a local cluster, else every
    CPU of the joined cluster divided by ``cpus_per_worker``. ``address``: None starts a local cluster with
    ``workers * cpus_per_worker`` CPUs; ``"auto"`` or ``"host:port"`` joins a running one (``ray start``)."""

    shard_size: int = 512
    batch_size: int = 64
    workers: int | None = None
    cpus_per_worker: int = 1
    address: str | None = None
    in_flight_per_worker: int = 2  # shards queued per worker, so a worker never waits for the driver

    def __post_init__(self) -> None:
        for name in ("shard_size", "batch_size", "cpus_per_worker", "in_flight_per_worker"):
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers is not None and self.workers < 1:
            raise InvalidInputError(f"workers must be >= 1, got {self.workers}")


# ------------------------------------------------------------------------------------------------ shards


@dataclass(frozen=True)
class Shard:
    """Rows ``start:stop`` of the job's texts; ``texts_sha256`` pins its content (position alone is not enough)."""

    index: int
    start: int
    stop: int
    texts_sha256: str

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 over the per-text sha256s (unambiguous: no separator inside a text can fake a boundary)."""
    return sha256_text("\n".join(sha256_text(t) for t in texts))


def plan_shards(texts: Sequence[str], shard_size: int) -> list[Shard]:
    """Cut ``texts`` in order into shards of ``shard_size`` rows (the last may be shorter)."""
    if shard_size < 1:
        raise InvalidInputError(f"shard_size must be >= 1, got {shard_size}")
    return [
        Shard(i, start, min(start + shard_size, len(texts)), texts_digest(texts[start : start + shard_size]))
        for i, start in enumerate(range(0, len(texts), shard_size))
    ]


def vectors_digest(vectors: np.ndarray) -> str:
    """sha256 of the vectors as little-endian C-ordered float32 bytes (independent of the .npy header)."""
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).hexdigest()


class ShardStore:
    """The ``shards/`` folder of a work folder: atomic writes, and the check that decides reuse vs redo."""

    def __init__(self, work_dir: str | os.PathLike[str]) -> None:
        self.work_dir = Path(work_dir)
        self.folder = self.work_dir / SHARDS_DIR

    def vectors_path(self, shard: Shard) -> Path:
        return self.folder / f"{shard.name}.npy"

    def sidecar_path(self, shard: Shard) -> Path:
        return self.folder / f"{shard.name}.json"

    def write(self, shard: Shard, vectors: np.ndarray, sidecar: dict[str, Any]) -> None:
        """Vectors first, sidecar last: a shard counts as done only once both are complete."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.vectors_path(shard), suffix=".npy") as tmp:
            np.save(tmp, np.ascontiguousarray(vectors, dtype="<f4"))
        atomic_write_text(self.sidecar_path(shard), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")

    def read_sidecar(self, shard: Shard) -> dict[str, Any] | None:
        try:
            data = json.loads(self.sidecar_path(shard).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def check(self, shard: Shard, fingerprint: str, dim: int) -> tuple[np.ndarray | None, str]:
        """``(vectors, "ok")`` for a reusable shard, else ``(None, why it must be redone)``."""
        side = self.read_sidecar(shard)
        if side is None:
            return None, "no sidecar" if not self.sidecar_path(shard).exists() else "unreadable sidecar"
        if side.get("format") != SHARD_FORMAT or int(side.get("format_version", -1)) != SHARD_FORMAT_VERSION:
            return None, "not a ctrag shard sidecar"
        if side.get("texts_sha256") != shard.texts_sha256 or side.get("rows") != shard.rows:
            return None, "texts changed"
        if side.get("encoder_fingerprint") != fingerprint:
            return None, f"embedded by encoder {side.get('encoder_fingerprint')}, not {fingerprint}"
        try:
            vectors = np.load(self.vectors_path(shard), allow_pickle=False)
        except (OSError, ValueError) as exc:
            return None, f"unreadable vectors ({exc})"
        if vectors.dtype != np.dtype("<f4") or vectors.shape != (shard.rows, dim):
            return None, f"vectors are {vectors.dtype} {vectors.shape}, expected float32 {(shard.rows, dim)}"
        if vectors_digest(vectors) != side.get("vectors_sha256"):
            return None, "vector checksum mismatch"
        return vectors, "ok"

    def remove_stale(self, keep: int) -> int:
        """Delete shard files numbered ``>= keep`` (left by an earlier, larger job) and abandoned temp files."""
        removed = 0
        if not self.folder.is_dir():
            return 0
        for entry in self.folder.iterdir():
            match = _SHARD_RE.match(entry.name)
            if (match and int(match.group(1)) >= keep) or (entry.name.startswith(".shard-") and ".tmp" in entry.name):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


# ------------------------------------------------------------------------------------------------ job report


@dataclass
class EmbedJobReport:
    """What one run did: which shards it embedded, which it reused, and why others were redone."""

    run_id: str
    work_dir: str
    rows: int
    shards: int
    embedded: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    redo_reasons: dict[int, str] = field(default_factory=dict)  # shard -> why an existing shard was not reused
    workers: int = 0
    address: str = ""
    seconds: float = 0.0
    embed_seconds: float = 0.0  # summed over workers

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "work_dir": self.work_dir,
            "rows": self.rows,
            "shards": self.shards,
            "embedded": len(self.embedded),
            "reused": len(self.reused),
            "redo_reasons": {str(k): v for k, v in self.redo_reasons.items()},
            "workers": self.workers,
            "address": self.address,
            "seconds": round(self.seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3),
        }


# ------------------------------------------------------------------------------------------------ Ray plumbing


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            "--engine ray needs Ray, which is not installed: pip install 'ctrag[ray]' (or use --engine local)"
        ) from exc
    return ray


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nobody listens at (``ray.init`` would retry for minutes, then exit)."""
    if address == "auto":
        return  # resolved by Ray from RAY_ADDRESS / the local `ray start` record; it fails fast itself
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidInputError(f"--ray-address must be 'auto' or HOST:PORT (e.g. 10.0.0.5:6379), got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise InvalidInputError(
            f"cannot reach the Ray cluster at {address} ({exc}); start its head with `ray start --head` "
            "or leave out --ray-address to run a local cluster"
        ) from None


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[Any]:
    """Ray connected for the block: reuse a session already open in this process, join ``address``, or start
    a local cluster of ``num_cpus`` CPUs (its session files in a private temp folder, removed afterwards)."""
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file in the home folder for a private cluster
    temp_dir = None
    try:
        if address is None:
            temp_dir = tempfile.mkdtemp(prefix="ctrag-ray-")
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                _temp_dir=temp_dir,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        else:
            _check_reachable(address)
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, SystemExit) as exc:  # ray.init exits the process on a lost GCS
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidInputError(f"cannot start or join {where}: {first_line}") from None
    try:
        yield ray
    finally:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


class _ShardWorker:
    """Body of the Ray actor: builds the encoder once, then embeds shard after shard."""

    def __init__(self, builder: EncoderBuilder, threads: int) -> None:
        with contextlib.suppress(ImportError):
            import torch

            torch.set_num_threads(threads)
        self.encoder = builder()

    def identity(self) -> dict[str, Any]:
        return {
            "fingerprint": self.encoder.fingerprint,
            "name": self.encoder.name,
            "dim": int(self.encoder.dim),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def embed(self, index: int, texts: list[str], batch_size: int) -> tuple[int, np.ndarray, str, float, str]:
        from ctrag.encoders.cache import embed_in_chunks

        t0 = time.perf_counter()
        vectors = embed_in_chunks(self.encoder, texts, batch_size=batch_size)
        seconds = time.perf_counter() - t0
        return index, vectors, vectors_digest(vectors), seconds, f"{socket.gethostname()}:{os.getpid()}"


def _ray_error_message(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# ------------------------------------------------------------------------------------------------ the job


def embed_on_ray(
    texts: Sequence[str],
    builder: EncoderBuilder,
    *,
    fingerprint: str,
    dim: int,
    work_dir: str | os.PathLike[str],
    config: RayEmbedConfig | None = None,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, EmbedJobReport]:
    """Embed ``texts`` on Ray in resumable shards; returns ``(vectors (n, dim) float32, report)``.

    ``fingerprint``/``dim`` are those of the encoder the index will record; every worker's encoder must match
    them. Shards already in ``work_dir`` that pass :meth:`ShardStore.check` are reused without starting Ray.
    Progress: ``"embed shards"`` (shards done of all) and ``"embed reports"`` (rows), reused shards included.
    """
    cfg = config or RayEmbedConfig()
    t_start = time.perf_counter()
    items = list(texts)
    shards = plan_shards(items, cfg.shard_size)
    store = ShardStore(work_dir)
    report = EmbedJobReport(uuid.uuid4().hex[:12], str(store.work_dir), len(items), len(shards))

    def open_work_dir() -> None:  # only once Ray is up: a refused cluster leaves nothing behind
        store.work_dir.mkdir(parents=True, exist_ok=True)
        store.remove_stale(len(shards))
        atomic_write_text(
            store.work_dir / JOB_NAME,
            json.dumps(
                {
                    "run_id": report.run_id,
                    "rows": len(items),
                    "texts_sha256": texts_digest(items),
                    "shard_size": cfg.shard_size,
                    "batch_size": cfg.batch_size,
                    "shards": len(shards),
                    "encoder_fingerprint": fingerprint,
                    "dim": dim,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
                indent=2,
            )
            + "\n",
        )

    out = np.empty((len(items), dim), dtype=np.float32)
    todo: list[Shard] = []
    for shard in shards:
        vectors, why = store.check(shard, fingerprint, dim)
        if vectors is not None:
            out[shard.start : shard.stop] = vectors
            report.reused.append(shard.index)
        else:
            todo.append(shard)
            if why != "no sidecar":
                report.redo_reasons[shard.index] = why
                logger.warning("shard %s will be embedded again: %s", shard.name, why)
    rows_done = sum(s.rows for s in shards) - sum(s.rows for s in todo)

    def tick() -> None:
        if progress is not None:
            progress(SHARD_STAGE, len(report.reused) + len(report.embedded), len(shards))
            progress(ROW_STAGE, rows_done, len(items))

    tick()
    if todo:
        local_workers = cfg.workers or 2
        with ray_session(cfg.address, local_workers * cfg.cpus_per_worker) as ray:
            open_work_dir()
            report.address = str(cfg.address or "local")
            by_index = {s.index: s for s in todo}
            results = _run_shards(ray, todo, items, builder, fingerprint, dim, cfg, report)
            with contextlib.closing(results):  # closing: the actors die with the loop, even on Ctrl-C
                for index, vectors, seconds, where in results:
                    shard = by_index[index]
                    store.write(
                        shard,
                        vectors,
                        {
                            "format": SHARD_FORMAT,
                            "format_version": SHARD_FORMAT_VERSION,
                            "shard": shard.index,
                            "start": shard.start,
                            "rows": shard.rows,
                            "dim": dim,
                            "texts_sha256": shard.texts_sha256,
                            "vectors_sha256": vectors_digest(vectors),
                            "encoder_fingerprint": fingerprint,
                            "run_id": report.run_id,
                            "embedded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "embed_seconds": round(seconds, 4),
                            "worker": where,
                        },
                    )
                    out[shard.start : shard.stop] = vectors
                    report.embedded.append(index)
                    rows_done += shard.rows
                    tick()
    else:
        open_work_dir()
    report.seconds = time.perf_counter() - t_start
    logger.info(
        "embedding job %s: %d shard(s) embedded, %d reused, in %.1f s",
        report.run_id,
        len(report.embedded),
        len(report.reused),
        report.seconds,
    )
    return out, report


def _run_shards(
    ray: Any,
    todo: list[Shard],
    texts: list[str],
    builder: EncoderBuilder,
    fingerprint: str,
    dim: int,
    cfg: RayEmbedConfig,
    report: EmbedJobReport,
) -> Generator[tuple[int, np.ndarray, float, str], None, None]:
    """Start the actors, check their encoders, keep each busy; yield ``(shard, vectors, seconds, worker)`` as
    shards finish.

    The actors are killed when the generator closes, normally or not (an interrupted driver leaves no workers).
    """
    n_workers = cfg.workers
    if n_workers is None:
        n_workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // cfg.cpus_per_worker)
    n_workers = min(n_workers, len(todo))
    report.workers = n_workers
    actor_cls = ray.remote(num_cpus=cfg.cpus_per_worker, max_restarts=1, max_task_retries=1)(_ShardWorker)
    actors = [
        actor_cls.options(scheduling_strategy="SPREAD").remote(builder, cfg.cpus_per_worker) for _ in range(n_workers)
    ]
    try:
        try:
            identities = ray.get([a.identity.remote() for a in actors])
        except ray.exceptions.RayError as exc:
            raise CtragError(f"a Ray worker could not build the encoder: {_ray_error_message(exc)}") from None
        for ident in identities:
            if ident["fingerprint"] != fingerprint or ident["dim"] != dim:
                raise DataValidationError(
                    f"Ray worker {ident['host']}:{ident['pid']} built encoder {ident['name']} "
                    f"({ident['fingerprint']}, dim {ident['dim']}), but the index records {fingerprint} (dim {dim}); "
                    "install the same weights on every node"
                )
        queue = list(reversed(todo))
        pending: dict[Any, tuple[int, int]] = {}  # object ref -> (shard index, actor slot)

        def submit(slot: int) -> None:
            shard = queue.pop()
            ref = actors[slot].embed.remote(shard.index, texts[shard.start : shard.stop], cfg.batch_size)
            pending[ref] = (shard.index, slot)

        for _ in range(cfg.in_flight_per_worker):
            for slot in range(n_workers):
                if queue:
                    submit(slot)
        expected = {s.index: s for s in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            shard_index, slot = pending.pop(ref)
            try:
                index, vectors, checksum, seconds, where = ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise CtragError(
                    f"shard {shard_index} failed on a Ray worker: {_ray_error_message(exc)} (finished shards are "
                    "kept; rerun to resume)"
                ) from None
            shard = expected[index]
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.shape != (shard.rows, dim) or vectors_digest(vectors) != checksum:
                raise DataValidationError(f"shard {index}: vectors arrived damaged (shape {vectors.shape})")
            report.embed_seconds += seconds
            if queue:
                submit(slot)
            yield index, vectors, seconds, where
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)


class RayEmbedder:
    """The ``embed`` engine for :func:`ctrag.index.build.build_index`: ``embedder(texts, progress)``.

    ``encoder`` is the driver's encoder (its fingerprint and dimension are what the index records and what each
    worker must reproduce); ``builder`` rebuilds it on the workers. ``last`` holds the report of the last job.
    """

    def __init__(
        self,
        builder: EncoderBuilder,
        *,
        fingerprint: str,
        dim: int,
        work_dir: str | os.PathLike[str],
        config: RayEmbedConfig | None = None,
    ) -> None:
        self.builder = builder
        self.fingerprint = fingerprint
        self.dim = int(dim)
        self.work_dir = Path(work_dir)
        self.config = config or RayEmbedConfig()
        self.last: EmbedJobReport | None = None

    @classmethod
    def for_encoder(
        cls,
        encoder: Encoder,
        builder: EncoderBuilder,
        *,
        work_dir: str | os.PathLike[str],
        config: RayEmbedConfig | None = None,
    ) -> RayEmbedder:
        return cls(builder, fingerprint=encoder.fingerprint, dim=encoder.dim, work_dir=work_dir, config=config)

    def __call__(self, texts: Sequence[str], progress: ProgressFn | None = None) -> np.ndarray:
        vectors, self.last = embed_on_ray(
            texts,
            self.builder,
            fingerprint=self.fingerprint,
            dim=self.dim,
            work_dir=self.work_dir,
            config=self.config,
            progress=progress,
        )
        return vectors

    def summary(self) -> str:
        """One line for the CLI: what the last job did and where its shards are."""
        if self.last is None:
            return f"ray (not run yet; work folder {self.work_dir})"
        r = self.last
        return (
            f"ray: {len(r.embedded)} shard(s) embedded on {r.workers} worker(s), {len(r.reused)} reused "
            f"(of {r.shards}), {r.seconds:.1f} s; work folder {r.work_dir}"
        )


def default_work_dir(out: str | os.PathLike[str]) -> Path:
    """``<out>.work``: beside the index folder, not inside it (an index save replaces its folder's versions)."""
    path = Path(out)
    return path.with_name(path.name + ".work")


def engine_from_options(
    engine: str,
    encoder: Encoder,
    builder: EncoderBuilder,
    *,
    out: str | os.PathLike[str],
    work_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    address: str | None = None,
    shard_size: int | None = None,
    batch_size: int = 64,
    cache: Any = None,
) -> RayEmbedder | None:
    """The ``embed`` engine that ``ctrag index --engine ...`` asks for: None for ``local``, a :class:`RayEmbedder`
    for ``ray``. Options that only the Ray engine reads are refused with ``local`` rather than ignored."""
    if engine not in ENGINES:
        raise InvalidInputError(f"--engine must be one of {list(ENGINES)}, got {engine!r}")
    ray_only = {"--work-dir": work_dir, "--workers": workers, "--ray-address": address, "--shard-size": shard_size}
    if engine == "local":
        given = [name for name, value in ray_only.items() if value is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)} apply to --engine ray only")
        return None
    if cache is not None:
        raise InvalidInputError("--cache works with --engine local; the Ray engine resumes from its --work-dir")
    _import_ray()  # a missing Ray fails here, before any embedding starts
    config = RayEmbedConfig(
        shard_size=shard_size or RayEmbedConfig.shard_size, batch_size=batch_size, workers=workers, address=address
    )
    return RayEmbedder.for_encoder(
        encoder, builder, work_dir=Path(work_dir) if work_dir is not None else default_work_dir(out), config=config
    )
