"""Content hashes: the shipped sample data's own checksum list, text/JSON hashes independent of formatting."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ctrag.utils.hashing import sha256_file, sha256_json, sha256_text

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


def test_sha256_file_matches_the_shipped_checksums() -> None:
    """``sample_data/SHA256SUMS`` was written by sha256sum; every listed file hashes to its entry."""
    entries = [line.split(maxsplit=1) for line in (SAMPLE / "SHA256SUMS").read_text().splitlines() if line.strip()]
    assert len(entries) > 10
    for digest, name in entries:
        assert sha256_file(SAMPLE / name.lstrip("*")) == digest, name


def test_chunked_reading_does_not_change_the_hash(tmp_path: Path) -> None:
    ct = SAMPLE / "ct" / "lowres" / "lung_pet_ct_dx_A0002_ct_128.nii.gz"
    whole = hashlib.sha256(ct.read_bytes()).hexdigest()
    assert sha256_file(ct, chunk=7) == sha256_file(ct) == whole
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_text_and_json_hashes() -> None:
    assert sha256_text("Größe") == hashlib.sha256("Größe".encode()).hexdigest()  # UTF-8, not the locale
    assert sha256_json({"b": 1, "a": [1, 2]}) == sha256_json({"a": [1, 2], "b": 1})  # key order does not matter
    assert sha256_json({"a": [1, 2]}) != sha256_json({"a": [2, 1]})  # list order does
    assert sha256_json({"p": Path("x")}) == sha256_json({"p": "x"})  # non-JSON values hash by str()
