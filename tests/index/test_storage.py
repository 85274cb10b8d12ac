"""Versioned index folders: a save becomes visible only through the CURRENT pointer, failures leave the previous
version in place, and foreign folders are never written into (the cleanup step deletes old versions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrag.errors import DataValidationError, InvalidInputError
from ctrag.index.storage import META_NAME, POINTER_NAME, STAGING_PREFIX, resolve_version_dir, versioned_write


def _write(root: Path, text: str) -> Path:
    with versioned_write(root) as staging:
        (staging / META_NAME).write_text(text, encoding="utf-8")
    return resolve_version_dir(root)


def test_each_save_switches_the_pointer_and_removes_the_old_version(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    first = _write(root, "one")
    assert (root / POINTER_NAME).read_text().strip() == first.name and (first / META_NAME).read_text() == "one"
    second = _write(root, "two")
    assert second != first and not first.exists() and (second / META_NAME).read_text() == "two"
    assert sorted(p.name for p in root.iterdir()) == sorted([POINTER_NAME, second.name])


def test_a_failed_save_leaves_the_previous_version(tmp_path: Path) -> None:
    root = tmp_path / "idx"
    first = _write(root, "one")
    with pytest.raises(RuntimeError, match="boom"), versioned_write(root) as staging:
        (staging / META_NAME).write_text("half", encoding="utf-8")
        raise RuntimeError("boom")
    assert resolve_version_dir(root) == first
    assert not [p for p in root.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_resolve_version_dir_errors_and_bare_folders(tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / META_NAME).write_text("{}")
    assert resolve_version_dir(bare) == bare
    with pytest.raises(InvalidInputError, match="no index at"):
        resolve_version_dir(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="not a ctrag index folder"):
        resolve_version_dir(tmp_path)
    root = tmp_path / "idx"
    _write(root, "one")
    (root / POINTER_NAME).write_text("../../etc\n")
    with pytest.raises(DataValidationError, match="invalid version name"):
        resolve_version_dir(root)
    (root / POINTER_NAME).write_text("v-gone\n")
    with pytest.raises(DataValidationError, match="index corrupted"):
        resolve_version_dir(root)


def test_foreign_folders_and_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.jsonl").write_text("{}\n")
    with (
        pytest.raises(InvalidInputError, match="not empty and not a ctrag index"),
        versioned_write(tmp_path / "corpus"),
    ):
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInputError, match="is not a folder"), versioned_write(tmp_path / "file"):
        pass
    assert (tmp_path / "corpus" / "manifest.jsonl").read_text() == "{}\n"
