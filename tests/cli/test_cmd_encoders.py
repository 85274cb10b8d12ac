"""``ctrag encoders list``: every registered architecture with its type, width and local pretrained tags."""

from __future__ import annotations

import json

import pytest

from ctrag.cli import _app, main
from ctrag.encoders.factory import get_model_config, list_encoders


def test_encoders_list_json_names_every_registered_encoder(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["encoders", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(list_encoders())
    by_name = {r["name"]: r for r in rows}
    for name, row in by_name.items():
        cfg = get_model_config(name)
        assert row["type"] == cfg["type"] and row["dim"] == cfg.get("embed_dim")
    assert by_name["ct-clip"]["dim"] == 512 and "ct-rate-v2" in by_name["ct-clip"]["tags"]
    assert by_name["hf-text"]["dim"] is None  # the width comes from the folder it is given


def test_encoders_list_table(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_app.console, "width", 400)  # one row per encoder, nothing folded
    capsys.readouterr()
    assert main(["encoders", "list"]) == 0
    out = capsys.readouterr().out
    assert "ctrag encoders" in out and "pretrained tags" in out
    assert all(name in out for name in list_encoders())
    hf_row = next(line for line in out.splitlines() if " hf-text " in line)
    assert "│ -" in hf_row  # no width and no tags are shown as "-"


def test_encoders_without_a_subcommand_shows_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["encoders"])
    captured = capsys.readouterr()
    assert code == 2 and "list" in captured.out + captured.err  # no_args_is_help: usage, exit 2
    assert "Traceback" not in captured.out + captured.err
