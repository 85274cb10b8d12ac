"""Crash-safe, versioned index directories.

An index is several files (metadata, FAISS structure, vectors, cases, optional scorer) that must change together.
Renaming one file atomically is easy; renaming a set is not. So every save writes a complete new *version*
folder and then switches a one-line pointer file, ``CURRENT``, with an atomic rename::

    INDEX_DIR/
      CURRENT                      <- "v-20261101T120000-1a2b3c4d"
      v-20261101T120000-1a2b3c4d/  <- index.json, index.faiss, vectors.npy, cases.jsonl, hybrid/ ...

A reader follows ``CURRENT``; until the pointer is replaced it sees the previous version in full. A save that
dies part-way (exception, kill, full disk) leaves only a ``.staging-*`` folder behind, which the next save
removes. Older versions are deleted after the switch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ctrag.errors import DataValidationError, InvalidInputError
from ctrag.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

POINTER_NAME = "CURRENT"
META_NAME = "index.json"
VERSION_PREFIX = "v-"
STAGING_PREFIX = ".staging-"
#: A staging folder older than this is assumed abandoned by a crashed writer (a live writer keeps touching it).
STALE_STAGING_S = 3600.0


def resolve_version_dir(root: str | os.PathLike[str]) -> Path:
    """The folder holding the current version's files (follows ``CURRENT``; a bare version folder also works)."""
    path = Path(root)
    pointer = path / POINTER_NAME
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if not name.startswith(VERSION_PREFIX) or "/" in name or os.sep in name:
            raise DataValidationError(f"index {path}: {POINTER_NAME} holds an invalid version name {name!r}")
        version = path / name
        if not (version / META_NAME).is_file():
            raise DataValidationError(
                f"index {path}: {POINTER_NAME} points to {name!r}, which has no {META_NAME} (index corrupted)"
            )
        return version
    if (path / META_NAME).is_file():
        return path
    if not path.exists():
        raise InvalidInputError(f"no index at {path} (build one with `ctrag index CORPUS_DIR --out {path}`)")
    raise InvalidInputError(f"{path} is not a ctrag index folder (it has neither {POINTER_NAME} nor {META_NAME})")


def _is_ours(entry: Path) -> bool:
    name = entry.name
    return name == POINTER_NAME or name.startswith((VERSION_PREFIX, STAGING_PREFIX, f".{POINTER_NAME}."))


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        with contextlib.suppress(OSError):
            fd = os.open(sub, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _cleanup(root: Path, keep: str) -> None:
    now = time.time()
    for entry in root.iterdir():
        try:
            old_version = entry.name.startswith(VERSION_PREFIX) and entry.name != keep and entry.is_dir()
            stale = entry.name.startswith(STAGING_PREFIX) and now - entry.stat().st_mtime > STALE_STAGING_S
            if old_version or stale:
                shutil.rmtree(entry)
        except OSError as exc:  # a reader on another OS may hold files open; leave it for the next save
            logger.warning("could not remove old index data %s: %s", entry, exc)


def _umask() -> int:
    """The process umask, read without changing it where possible (``os.umask`` is process-wide and racy)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    current = os.umask(0o022)
    os.umask(current)
    return current


@contextlib.contextmanager
def versioned_write(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder; on clean exit it becomes the current version of ``root``.

    Refuses to write into a non-empty folder that is not an index (e.g. a corpus folder given as ``--out`` by
    mistake), because the cleanup step deletes old versions.
    """
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"index output {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    foreign = sorted(e.name for e in path.iterdir() if not _is_ours(e))
    if foreign:
        raise InvalidInputError(
            f"index output {path} is not empty and not a ctrag index (found {foreign[:5]}); choose another folder"
        )
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=path))
    umask = _umask()
    try:
        yield staging
        _fsync_tree(staging)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; an index is as shareable as other outputs
        name = f"{VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        os.rename(staging, path / name)
        atomic_write_text(path / POINTER_NAME, name + "\n")
        os.chmod(path / POINTER_NAME, 0o666 & ~umask)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _cleanup(path, keep=name)
