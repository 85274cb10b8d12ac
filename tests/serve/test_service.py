"""``ctrag.serve.service``: the mask warm-up that ``ctrag serve`` runs after loading, on the shipped real masks."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest

from ctrag.data import labels as label_module
from ctrag.serve.config import ServeConfig
from ctrag.serve.service import CtragService


def test_warm_mask_cache_converts_every_mask_once_and_reports_failures(
    serve_config: ServeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = CtragService(dataclasses.replace(serve_config, out_dir=tmp_path))
    with_masks = [c.case_id for c in service._cases() if c.mask_path and Path(c.mask_path).is_file()]
    assert len(with_masks) >= 2, "the shipped corpus has several real masks"
    broken = with_masks[0]
    real_convert = label_module.convert_labels
    calls: list[str] = []

    def convert(array: Any, source: Any, target: str, *, name: str = "") -> Any:
        calls.append(name)
        if name == broken:
            raise ValueError("unreadable label values")
        return real_convert(array, source, target, name=name)

    monkeypatch.setattr(label_module, "convert_labels", convert)
    seen: list[tuple[int, int]] = []
    failed = service.warm_mask_cache(progress=lambda done, total: seen.append((done, total)))

    assert set(failed) == {broken} and "unreadable" in failed[broken]
    assert seen[-1] == (len(with_masks), len(with_masks))
    cached = sorted(p.name for p in (tmp_path / "cache" / "cases").glob("*.mask.nii.gz"))
    assert cached == sorted(f"{cid}.{service.label_set}.mask.nii.gz" for cid in with_masks if cid != broken)
    # A request after the warm-up reads the cached file; a request racing it waits instead of converting again.
    calls.clear()
    threads = [threading.Thread(target=service.case_mask_file, args=(with_masks[1],)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == []
