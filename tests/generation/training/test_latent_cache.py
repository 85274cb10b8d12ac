"""The on-disk latent cache: shards refused on a wrong checksum or fingerprint, resume redoes only the unfinished
shard, unreadable inputs skipped and listed (real shipped CTs and the session's trained VAE)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrag.data.case import Case
from ctrag.errors import CheckpointMismatchError, DataValidationError
from ctrag.generation.run_folder import component_hash, load_vae_component
from ctrag.generation.training.latent_cache import (
    MANIFEST,
    CacheSource,
    LatentCache,
    build_latent_cache,
    cache_config,
    case_sources,
    corpus_sources,
    make_cache_key,
)
from tests.generation.conftest import tiny_config


@pytest.fixture(scope="module")
def vae_and_key(trained_run: Path):  # type: ignore[no-untyped-def]
    cfg = tiny_config()
    vae, _ = load_vae_component(trained_run / "vae", cfg, "cpu")
    settings = cache_config(cfg.preprocess, (64, 64, 32), "coarse", "segment", cfg.vae.downsample)
    return vae, make_cache_key(component_hash(trained_run / "vae"), None, settings), settings


def test_cache_round_trip_and_refusals(tmp_path: Path, vae_and_key, training_cases) -> None:  # type: ignore[no-untyped-def]
    vae, key, settings = vae_and_key
    cases = training_cases[:3]
    build_latent_cache(tmp_path, case_sources(cases), vae, key, settings, shard_cases=2)
    cache = LatentCache(tmp_path, key)
    assert [e.case_id for e in cache.entries] == [c.case_id for c in cases]
    latent, labels, _, _ = cache.read(0)
    image = cases[0].image  # padded (with the window's low value) to a multiple of the VAE factor, never cropped
    padded = np.pad(image, [(0, (-s) % 4) for s in image.shape], constant_values=0.0)
    with torch.no_grad():
        direct, _ = vae.encode(torch.from_numpy(padded)[None, None])
    assert tuple(labels.shape) == padded.shape
    torch.testing.assert_close(latent, direct[0], rtol=1e-5, atol=1e-5)

    # another VAE fingerprint: refused, both fingerprints named
    other = make_cache_key("0" * 64, None, settings)
    with pytest.raises(CheckpointMismatchError, match=f"{'0' * 64}.*{key.vae}|{key.vae}.*{'0' * 64}"):
        LatentCache(tmp_path, other)
    with pytest.raises(CheckpointMismatchError, match="text_encoder"):
        build_latent_cache(tmp_path, case_sources(cases), vae, make_cache_key(key.vae, _Enc(), settings), settings,
                           shard_cases=2)  # fmt: skip

    # a shard whose .json was written under another key is refused, not reused or rebuilt
    meta_path = tmp_path / "shard-00001.json"
    meta = json.loads(meta_path.read_text())
    meta["key"]["config"] = "f" * 32
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointMismatchError, match=f"{'f' * 32}.*{key.config}"):
        LatentCache(tmp_path, key)
    meta["key"]["config"] = key.config
    meta_path.write_text(json.dumps(meta))

    # one flipped byte in a shard: refused on read
    shard = tmp_path / "shard-00001.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    fresh = LatentCache(tmp_path, key)
    fresh.read(0)  # shard 0 is intact
    with pytest.raises(DataValidationError, match="checksum"):
        fresh.read(2)


class _Enc:
    fingerprint = "some-other-text-encoder"


class _Killed(BaseException):
    """Stands for a kill: nothing in the build may catch it."""


def test_resume_after_an_interrupted_build_redoes_only_the_unfinished_shard(
    tmp_path: Path, vae_and_key, training_cases
) -> None:  # type: ignore[no-untyped-def]
    vae, key, settings = vae_and_key
    sources = case_sources(training_cases[:4])

    def killed() -> None:
        raise _Killed

    broken = [*sources[:3], CacheSource(sources[3].case_id, killed)]  # dies inside shard 1, after shard 0
    with pytest.raises(_Killed):
        build_latent_cache(tmp_path, broken, vae, key, settings, shard_cases=2)
    assert (tmp_path / "shard-00000.json").is_file() and not (tmp_path / "shard-00001.json").exists()
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind
    assert not json.loads((tmp_path / MANIFEST).read_text())["complete"]
    with pytest.raises(Exception, match="unfinished"):
        LatentCache(tmp_path, key)
    first = (tmp_path / "shard-00000.pt").stat().st_mtime_ns
    report = build_latent_cache(tmp_path, sources, vae, key, settings, shard_cases=2)
    assert report.built == [1] and report.reused == [0]
    assert (tmp_path / "shard-00000.pt").stat().st_mtime_ns == first
    # a shard written but killed before its .json (the rename order) counts as unfinished too
    (tmp_path / "shard-00001.json").unlink()
    assert build_latent_cache(tmp_path, sources, vae, key, settings, shard_cases=2).built == [1]
    assert len(LatentCache(tmp_path, key)) == 4


def test_unreadable_volume_is_skipped_and_listed(tmp_path: Path, vae_and_key, gen_corpus) -> None:  # type: ignore[no-untyped-def]
    vae, key, settings = vae_and_key
    good = next(c for c in gen_corpus if c.split == "train" and c.case_id == "lung_pet_ct_dx_A0002")
    assert good.volume_path is not None
    raw = gzip.decompress(Path(good.volume_path).read_bytes())
    bad_path = tmp_path / "truncated_ct.nii.gz"
    bad_path.write_bytes(gzip.compress(raw[: len(raw) // 3]))  # a copy cut off mid-volume
    bad = Case(case_id="truncated_copy", patient_id="truncated_copy", split="train", volume_path=str(bad_path))
    missing = Case(case_id="gone", patient_id="gone", split="train", volume_path=str(tmp_path / "gone.nii.gz"))
    cfg = tiny_config()
    sources = corpus_sources([good, bad, missing], cfg.preprocess, splits=("train",), min_shape=(64, 64, 32),
                             label_set="coarse", mask_from="segment")  # fmt: skip
    report = build_latent_cache(tmp_path / "cache", sources, vae, key, settings, shard_cases=2)
    assert [s["case_id"] for s in report.skipped] == ["truncated_copy", "gone"]
    assert all(s["reason"] for s in report.skipped)
    manifest = json.loads((tmp_path / "cache" / MANIFEST).read_text())
    assert manifest["n_cases"] == 1 and [s["case_id"] for s in manifest["skipped"]] == ["truncated_copy", "gone"]
    cache = LatentCache(tmp_path / "cache", key)
    assert [e.case_id for e in cache.entries] == ["lung_pet_ct_dx_A0002"]
    assert cache.mask_origins["lung_pet_ct_dx_A0002"] == "segment:classical"
    shutil.rmtree(tmp_path / "cache")
