"""On-disk embedding cache: (encoder fingerprint, sha256 of the content) -> vector, in one SQLite file; chunked
embedding with progress (:func:`embed_in_chunks`) and an in-memory memo encoder (:func:`memo_encoder`) on top.

Why SQLite: several processes (CLI runs, the server, benchmark workers) may fill the same cache at once, and a run
may be killed mid-write. SQLite transactions give both for free — a reader sees a row completely or not at all,
concurrent writers wait on the file lock (``timeout``) instead of corrupting it, and WAL mode lets readers proceed
while one writer commits.

Why the fingerprint is part of the key: two encoders (or one encoder with another long-text mode) give different
vectors for the same text; keying by the fingerprint means they can share a cache file and never mix.

Every row stores a sha256 of its vector bytes. A row whose checksum, length or norm is off (disk fault, a bug in an
older writer, manual edits) is reported as corrupt, treated as a miss, recomputed and overwritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ctrag.errors import InvalidInputError
from ctrag.utils.hashing import sha256_text
from ctrag.utils.progress import ProgressFn

if TYPE_CHECKING:
    from ctrag.encoders.base import Encoder

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    fingerprint TEXT NOT NULL,
    content_sha TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    checksum TEXT NOT NULL,
    PRIMARY KEY (fingerprint, content_sha)
) WITHOUT ROWID
"""
_NORM_TOLERANCE = 1e-3


class TextEncoderLike(Protocol):
    """What ``encode_text_cached`` needs from an encoder."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray: ...


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    written: int = 0


def content_key(text: str) -> str:
    """Cache key of a text: sha256 of its UTF-8 bytes (exact text; no normalisation, so no false hits)."""
    return sha256_text(text)


def _checksum(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


class EmbeddingCache:
    """SQLite-backed vector cache; safe to share between threads and processes. Use ``":memory:"`` for tests."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(_SCHEMA)
        self.stats = CacheStats()

    # --- context manager / lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- reads ---------------------------------------------------------------------------------------------------
    def get_many(self, fingerprint: str, keys: Iterable[str], dim: int) -> dict[str, np.ndarray]:
        """Valid cached vectors for ``keys`` (missing and corrupt rows are simply absent from the result)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):  # stay under SQLite's bound-parameter limit
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT content_sha, dim, vector, checksum FROM embeddings "
                    f"WHERE fingerprint = ? AND content_sha IN ({marks})",
                    [fingerprint, *chunk],
                ).fetchall()
                for key, row_dim, blob, checksum in rows:
                    vec = self._decode(key, row_dim, blob, checksum, dim)
                    if vec is not None:
                        found[key] = vec
        return found

    def _decode(self, key: str, row_dim: int, blob: bytes, checksum: str, dim: int) -> np.ndarray | None:
        problem = None
        if row_dim != dim or len(blob) != 4 * dim:
            problem = f"size {len(blob)} bytes / dim {row_dim}, expected dim {dim}"
        elif _checksum(blob) != checksum:
            problem = "checksum mismatch"
        else:
            vec = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            norm = float(np.linalg.norm(vec))
            if not np.all(np.isfinite(vec)) or abs(norm - 1.0) > _NORM_TOLERANCE:
                problem = f"not a unit vector (norm {norm:.4g})"
            else:
                return vec
        self.stats.corrupt += 1
        logger.warning("embedding cache %s: corrupt entry %s (%s); it will be recomputed", self.path, key[:12], problem)
        return None

    # --- writes --------------------------------------------------------------------------------------------------
    def put_many(self, fingerprint: str, items: Mapping[str, np.ndarray]) -> None:
        """Insert or replace vectors in one transaction (all rows or none become visible)."""
        rows = []
        for key, vec in items.items():
            arr = np.ascontiguousarray(vec, dtype="<f4").reshape(-1)
            blob = arr.tobytes()
            rows.append((fingerprint, key, int(arr.shape[0]), blob, _checksum(blob)))
        if not rows:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO embeddings (fingerprint, content_sha, dim, vector, checksum) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        self.stats.written += len(rows)

    def count(self, fingerprint: str | None = None) -> int:
        with self._lock:
            if fingerprint is None:
                return int(self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])
            sql = "SELECT COUNT(*) FROM embeddings WHERE fingerprint = ?"
            return int(self._conn.execute(sql, (fingerprint,)).fetchone()[0])

    def __len__(self) -> int:
        return self.count()

    def fingerprints(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT DISTINCT fingerprint FROM embeddings ORDER BY 1")]

    def clear(self, fingerprint: str | None = None) -> int:
        """Delete all rows (or those of one encoder); returns how many were removed."""
        with self._lock:
            if fingerprint is None:
                cur = self._conn.execute("DELETE FROM embeddings")
            else:
                cur = self._conn.execute("DELETE FROM embeddings WHERE fingerprint = ?", (fingerprint,))
            return int(cur.rowcount)


def encode_text_cached(
    encoder: TextEncoderLike,
    texts: Sequence[str],
    cache: EmbeddingCache,
    batch_size: int | None = None,
) -> np.ndarray:
    """``encoder.encode_text(texts)`` through ``cache``: only misses (deduplicated) are encoded; order is kept."""
    if isinstance(texts, str):
        raise InvalidInputError("encode_text_cached expects a list of strings, got a single str")
    items = list(texts)
    dim = int(encoder.dim)
    out = np.empty((len(items), dim), dtype=np.float32)
    if not items:
        return out
    fingerprint = encoder.fingerprint
    keys = [content_key(t) if isinstance(t, str) else "" for t in items]
    found = cache.get_many(fingerprint, (k for k in keys if k), dim)
    missing: dict[str, str] = {}
    for key, text in zip(keys, items, strict=True):
        if key not in found and key not in missing:
            missing[key] = text
    cache.stats.hits += sum(1 for k in keys if k in found)
    cache.stats.misses += len(items) - sum(1 for k in keys if k in found)
    if missing:
        miss_keys = list(missing)
        kwargs = {"batch_size": batch_size} if batch_size else {}
        vectors = np.asarray(encoder.encode_text([missing[k] for k in miss_keys], **kwargs), dtype=np.float32)
        if vectors.shape != (len(miss_keys), dim):
            raise InvalidInputError(f"encoder returned shape {vectors.shape} for {len(miss_keys)} texts (dim {dim})")
        new = dict(zip(miss_keys, vectors, strict=True))
        cache.put_many(fingerprint, new)
        found.update(new)
    for i, key in enumerate(keys):
        out[i] = found[key]
    return out


# ------------------------------------------------------------------------------------------ chunked embedding


class NamedTextEncoder(TextEncoderLike, Protocol):
    """A text encoder with a name (for error messages)."""

    @property
    def name(self) -> str: ...


def embed_in_chunks(
    encoder: NamedTextEncoder,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    cache: EmbeddingCache | None = None,
    stage: str = "embed reports",
) -> np.ndarray:
    """Embed ``texts`` in chunks so long corpora report progress; (n, dim) L2-normalised float32.

    With ``cache`` (keyed by text hash + encoder fingerprint) only texts not embedded before are encoded.
    Progress is reported as ``progress(stage, done, total)`` after each chunk.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    from ctrag.encoders.text import one_truncation_warning

    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    with one_truncation_warning(encoder):  # one line for the corpus, not one per chunk
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            if cache is not None:
                emb = encode_text_cached(encoder, chunk, cache, batch_size=batch_size)
            else:
                emb = np.asarray(encoder.encode_text(chunk, batch_size=batch_size), dtype=np.float32)
            if emb.shape != (len(chunk), encoder.dim):
                raise InvalidInputError(
                    f"encoder {encoder.name} returned shape {emb.shape} for {len(chunk)} texts (dim {encoder.dim})"
                )
            out[start : start + len(chunk)] = emb
            if progress is not None:
                progress(stage, start + len(chunk), len(texts))
    return out


# ------------------------------------------------------------------------------------------------ memo encoder

MEMO_STAGE = "encode reports"


def memo_encoder(
    encoder: Encoder,
    *,
    cache_path: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    max_items: int | None = None,
) -> Encoder:
    """An :class:`~ctrag.encoders.base.Encoder` that wraps ``encoder`` and remembers vectors by text.

    See :class:`MemoTextEncoder`. The class is made here so that importing this module never needs torch.
    """
    from ctrag.encoders.base import Encoder as _Base

    class _MemoEncoder(MemoTextEncoder, _Base):
        pass

    return _MemoEncoder(encoder, cache_path=cache_path, progress=progress, max_items=max_items)


class MemoTextEncoder:
    """Wraps an encoder: remembers vectors by text (and optionally uses the on-disk :class:`EmbeddingCache`).

    An evaluation embeds the same reports for the index build, the retriever's query encoding and every
    baseline; with this wrapper each report is encoded once per run, in batches that report progress
    (``progress("encode reports", done, total)``). It keeps the wrapped encoder's name, dimension and
    fingerprint, so indexes and guards treat it as that encoder. Build one with :func:`memo_encoder` (the
    :class:`~ctrag.encoders.base.Encoder` base then supplies ``supports_text`` / ``supports_volume``).
    ``max_items`` bounds the memo (least recently used texts go first) for long-lived processes.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        cache_path: str | os.PathLike[str] | None = None,
        progress: ProgressFn | None = None,
        max_items: int | None = None,
    ) -> None:
        if max_items is not None and max_items < 1:
            raise InvalidInputError(f"max_items must be >= 1 or None, got {max_items}")
        self.inner = encoder
        self.name = encoder.name
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self.max_items = max_items
        self._cache_path = Path(cache_path) if cache_path is not None else None
        self.progress = progress
        self.encode_seconds = 0.0

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def _encode_new(self, texts: list[str], batch_size: int) -> np.ndarray:
        cache = EmbeddingCache(self._cache_path) if self._cache_path is not None else None
        try:
            return embed_in_chunks(
                self.inner, texts, batch_size=batch_size, cache=cache, progress=self.progress, stage=MEMO_STAGE
            )
        finally:
            if cache is not None:
                cache.close()

    def encode_text(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        items = list(texts)
        new = list(dict.fromkeys(t for t in items if t not in self._memo))
        if new:
            t0 = time.perf_counter()
            vectors = self._encode_new(new, max(1, int(batch_size)))
            self.encode_seconds += time.perf_counter() - t0
            self._memo.update(zip(new, vectors, strict=True))
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.stack([self._memo[t] for t in items]).astype(np.float32)
        if self.max_items is not None:
            for t in items:
                self._memo.move_to_end(t)
            while len(self._memo) > self.max_items:
                self._memo.popitem(last=False)
        return out

    def encode_volume(self, volumes: Any, batch_size: int = 4) -> np.ndarray:
        raise NotImplementedError("the memo encoder wraps text encoders only")
