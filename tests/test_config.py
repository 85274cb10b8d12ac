from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from ctrag.config import config_to_dict, load_config
from ctrag.errors import ConfigError


@dataclass
class Inner:
    channels: tuple[int, ...] = (8, 16)
    kind: Literal["flat", "hnsw"] = "flat"


@dataclass
class Outer:
    lr: float = 1e-3
    epochs: int = 2
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    path: Path | None = None


def test_yaml_roundtrip_and_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.01\ninner:\n  channels: [4, 8, 16]\n  kind: hnsw\n")
    cfg = load_config(Outer, cfg_file, overrides=["epochs=5", "inner.kind=flat", "path=/tmp/x"])
    assert cfg.lr == 0.01 and cfg.epochs == 5
    assert cfg.inner.channels == (4, 8, 16) and cfg.inner.kind == "flat"
    assert cfg.path == Path("/tmp/x")
    again = load_config(Outer, config_to_dict(cfg))
    assert again == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lr": "fast"}, "Outer.lr: expected a number"),
        ({"epochs": 1.5}, "Outer.epochs: expected an integer"),
        ({"inner": {"kind": "ivf"}}, "Outer.inner.kind: expected one of ['flat', 'hnsw']"),
        ({"typo": 1}, "unknown key(s) ['typo']"),
    ],
)
def test_bad_config_is_named(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(Outer, data)
    assert message in str(err.value)


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ConfigError, match="unknown config preset 'nope'"):
        load_config(Outer, "nope")
