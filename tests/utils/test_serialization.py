"""JSON / NPZ component files: round trips, and a clear error for a missing, broken or foreign header."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from ctrag.errors import DataValidationError
from ctrag.utils.serialization import load_csr, read_json, read_meta, read_npz, save_csr, write_json, write_npz


def test_json_and_npz_round_trip(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"kind": "thing", "format_version": 1, "text": "Läsion"})
    assert read_json(tmp_path / "a.json")["text"] == "Läsion"
    matrix = sp.csr_matrix(np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 3.0]]))
    write_npz(tmp_path / "m.npz", {**save_csr("m", matrix), "v": np.arange(3)})
    arrays = read_npz(tmp_path / "m.npz")
    np.testing.assert_array_equal(load_csr("m", arrays).toarray(), matrix.toarray())
    np.testing.assert_array_equal(arrays["v"], np.arange(3))
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries behind


def test_read_meta_checks_kind_and_version(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"kind": "thing", "format_version": 3})
    assert read_meta(tmp_path / "a.json", "thing", max_version=3)["format_version"] == 3
    with pytest.raises(DataValidationError, match="does not hold a other"):
        read_meta(tmp_path / "a.json", "other")
    with pytest.raises(DataValidationError, match="format 3 is too new"):
        read_meta(tmp_path / "a.json", "thing", max_version=2)
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataValidationError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(DataValidationError, match=r"missing nothere\.npz"):
        read_npz(tmp_path / "nothere.npz")
