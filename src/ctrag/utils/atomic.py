"""Crash-safe file writing: write to a sibling temporary file, fsync, then ``os.replace``.

A reader therefore sees either the old file or the complete new one, never a truncated mix; an interrupted
write (exception, disk full, kill) leaves the previous file untouched and removes its temporary.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem supports fsync on a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on clean exit it replaces ``final`` atomically.

    Use this for writers that want a path rather than a file object (nibabel, faiss, numpy). ``suffix`` keeps
    extensions that writers inspect (``.nii.gz``).
    """
    final_path = Path(final)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=f".tmp{suffix}", dir=final_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the final file the permissions a plain open() would (0666 minus umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final_path)
        _fsync_dir(final_path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(final: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it becomes ``final`` only if the block completes."""
    if "w" not in mode:
        raise ValueError(f"atomic_open only supports write modes, got mode={mode!r}")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    with atomic_path(final) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()


def atomic_write_text(final: str | os.PathLike[str], text: str) -> None:
    with atomic_open(final, "w") as fh:
        fh.write(text)
