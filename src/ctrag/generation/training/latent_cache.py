"""On-disk latent cache: the training corpus preprocessed once (VAE latents, label maps, text embeddings), sharded.

Why: the in-memory path keeps every training CT in RAM, which at CT-RATE scale (27,514 train volumes) is ~3.4 TiB.
With the VAE frozen, its latents are all the flow trainings read, so they are computed once and written to disk;
training then reads shards lazily (``streaming.py``) and its memory no longer depends on the corpus size.

Layout of a cache folder (format ``CACHE_FORMAT``; see docs/scale.md, "Latent cache for ControlNet training"):

* ``cache.json`` — the key (VAE fingerprint, text-encoder fingerprint, preprocessing-config hash), the
  preprocessing config itself, the planned case list and shard size, and after a finished build the totals and
  the skipped (unreadable) inputs;
* ``shard-00000.pt`` — ``torch.save`` of ``latent.<i>`` (C, x, y, z) float32 VAE posterior means of the whole
  case, ``labels.<i>`` (X, Y, Z) uint8 label maps on the image grid, ``context`` (n, D) float32 and ``has_text``
  (n,) bool, for the n readable cases of the shard;
* ``shard-00000.json`` — the same key, the shard's planned and written case ids, their mask origins, skipped
  inputs with reasons, and the sha256 of the ``.pt`` file. Written after the ``.pt``: a shard counts as
  finished only when its ``.json`` exists, matches the key and its checksum matches.

Both files are written through a temporary file and renamed (``ctrag.utils.atomic``), so a kill or a full disk
leaves either no shard or a ``.pt`` without ``.json``; a resumed build redoes exactly those shards. A shard
built with another VAE, encoder or preprocessing is refused with both fingerprints, never reused.

Images are padded (with the window's low value, labels with 0) to a multiple of the VAE's downsampling factor, so
a latent crop at latent offset ``o`` corresponds to the image crop at ``o * factor``. Each case is encoded whole:
a crop of the whole-volume latent is not bit-equal to the latent of the image crop (convolutions see past the
crop border), which is the one way this path differs from the memory path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrag.config import config_to_dict
from ctrag.data.case import Case, Corpus
from ctrag.data.heldout import HeldOut
from ctrag.data.transforms import PreprocessConfig
from ctrag.errors import CheckpointMismatchError, ConfigError, CtragError, DataValidationError, InvalidInputError
from ctrag.generation.run_folder import save_state_dict
from ctrag.generation.training.data import MaskFrom, TrainingCase, load_training_case, select_training_cases
from ctrag.utils.atomic import atomic_write_text
from ctrag.utils.hashing import sha256_file, sha256_json
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST = "cache.json"


@dataclass(frozen=True)
class CacheKey:
    """What a cache's contents depend on; any difference means the cached latents are not this run's."""

    vae: str
    text_encoder: str
    config: str

    def as_dict(self) -> dict[str, str]:
        return {"vae": self.vae, "text_encoder": self.text_encoder, "config": self.config}

    def check(self, other: Mapping[str, Any], where: str) -> None:
        """Refuse ``where`` unless it was built with this key (the message names both sides)."""
        diffs = [
            f"{name}: {where} has {other.get(name)!r}, this run has {mine!r}"
            for name, mine in self.as_dict().items()
            if other.get(name) != mine
        ]
        if diffs:
            raise CheckpointMismatchError(
                f"{where} was built with another {' / '.join(d.split(':')[0] for d in diffs)} and is not reused ("
                + "; ".join(diffs)
                + "); use another cache folder or delete this one"
            )


def cache_config(
    space: PreprocessConfig,
    min_shape: Sequence[int],
    label_set: str,
    mask_from: str,
    factor: int,
    segment_config: Any | None = None,
) -> dict[str, Any]:
    """The preprocessing that decides the cached arrays (hashed into the key, stored in ``cache.json``)."""
    seg = config_to_dict(segment_config) if segment_config is not None else None
    return {
        "format": CACHE_FORMAT,
        "preprocess": config_to_dict(space),
        "min_shape": [int(v) for v in min_shape],
        "label_set": label_set,
        "mask_from": mask_from,
        "downsample": int(factor),
        "segment": seg,
        "latent_dtype": "float32",
    }


def make_cache_key(vae_fingerprint: str, encoder: Any | None, config: Mapping[str, Any]) -> CacheKey:
    text = str(getattr(encoder, "fingerprint", None) or "none") if encoder is not None else "none"
    return CacheKey(vae=vae_fingerprint, text_encoder=text, config=sha256_json(dict(config))[:32])


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class CacheSource:
    """One input case, loaded only when its shard is built (so the build holds one shard in memory)."""

    case_id: str
    load: Callable[[], TrainingCase]
    text: str | None = None
    """Report text to embed when the loaded case carries no embedding yet."""
    text_source: str = "none"


def corpus_sources(
    corpus: Corpus | Sequence[Case],
    space: PreprocessConfig,
    *,
    splits: Sequence[str],
    min_shape: tuple[int, int, int],
    label_set: str,
    mask_from: MaskFrom,
    segment_config: Any | None = None,
    held_out: HeldOut | None = None,
    with_text: bool = True,
) -> list[CacheSource]:
    """The training split's cases as lazily loaded sources (the held-out guard applies as in memory)."""
    cases = select_training_cases(corpus, splits, held_out=held_out)
    out = []
    for c in cases:
        load = partial(load_training_case, c, space, min_shape, label_set, mask_from, segment_config)
        has = with_text and c.has_report and c.report_source != "none"
        out.append(CacheSource(c.case_id, load, c.report_text if has else None, c.report_source if has else "none"))
    return out


def case_sources(cases: Iterable[TrainingCase]) -> list[CacheSource]:
    """Already loaded cases (tests, callers that prepared their own) as sources."""
    return [CacheSource(c.case_id, partial(lambda x: x, c)) for c in cases]


# ------------------------------------------------------------------------------------------------ build


@dataclass
class BuildReport:
    built: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _pad_to(array: np.ndarray, factor: int, fill: float) -> np.ndarray:
    pad = [(0, (-s) % factor) for s in array.shape]
    if not any(p for _, p in pad):
        return array
    return np.pad(array, pad, mode="constant", constant_values=fill)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _shard_is_finished(out: Path, index: int, key: CacheKey, planned: list[str]) -> bool:
    """True for a shard to reuse; False for one to (re)build; refuses one built under another key."""
    meta = _read_json(out / f"{shard_name(index)}.json")
    data = out / f"{shard_name(index)}.pt"
    if meta is None or not data.is_file():
        return False
    key.check(meta.get("key", {}), f"cache shard {data}")
    if meta.get("planned") != planned:
        return False
    if sha256_file(data) != meta.get("sha256"):
        logger.warning("latent cache: %s fails its checksum; rebuilding it", data)
        return False
    return True


@torch.no_grad()
def build_latent_cache(
    out: str | Path,
    sources: Sequence[CacheSource],
    vae: torch.nn.Module,
    key: CacheKey,
    config: Mapping[str, Any],
    *,
    shard_cases: int = 8,
    encoder: Any | None = None,
    text_dim: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> BuildReport:
    """Write (or finish) the cache in ``out``; finished shards with the same key are kept, others rebuilt.

    Unreadable inputs (``load`` raising a ctrag data error or an ``OSError``) are skipped and listed in their
    shard and in ``cache.json``; the build goes on."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    ids = [s.case_id for s in sources]
    if len(set(ids)) != len(ids):
        raise InvalidInputError("latent cache: case ids must be unique")
    factor = int(config["downsample"])
    fill = float(config["preprocess"]["output_range"][0])
    manifest = _read_json(root / MANIFEST)
    if manifest is not None:
        key.check(manifest.get("key", {}), f"latent cache {root}")
        if manifest.get("cases") != ids or manifest.get("shard_cases") != shard_cases:
            raise CheckpointMismatchError(
                f"latent cache {root} was planned for another case list or shard size "
                f"({len(manifest.get('cases') or [])} cases / {manifest.get('shard_cases')} per shard vs "
                f"{len(ids)} / {shard_cases}); use another cache folder"
            )
    plan = {"format": CACHE_FORMAT, "key": key.as_dict(), "config": dict(config), "shard_cases": shard_cases}
    plan["cases"] = ids
    plan["complete"] = False
    atomic_write_text(root / MANIFEST, json.dumps(plan, indent=1) + "\n")
    report = BuildReport()
    n_shards = (len(sources) + shard_cases - 1) // shard_cases
    vae.eval()
    for s in range(n_shards):
        chunk = list(sources[s * shard_cases : (s + 1) * shard_cases])
        planned = [c.case_id for c in chunk]
        if _shard_is_finished(root, s, key, planned):
            report.reused.append(s)
            meta = _read_json(root / f"{shard_name(s)}.json") or {}
            report.skipped.extend(meta.get("skipped", []))
        else:
            report.skipped.extend(_build_shard(root, s, chunk, vae, key, factor, fill, encoder, text_dim, device))
            report.built.append(s)
        if progress is not None:
            progress("latent cache", s + 1, n_shards)
    plan.update(complete=True, n_shards=n_shards, skipped=report.skipped)
    plan["n_cases"] = len(ids) - len(report.skipped)
    atomic_write_text(root / MANIFEST, json.dumps(plan, indent=1) + "\n")
    logger.info(
        "latent cache %s: %d shards (%d built, %d reused), %d cases, %d unreadable input(s) skipped%s",
        root, n_shards, len(report.built), len(report.reused), plan["n_cases"], len(report.skipped),
        "".join(f"\n  skipped {k['case_id']}: {k['reason']}" for k in report.skipped),
    )  # fmt: skip
    return report


def _build_shard(
    root: Path,
    index: int,
    chunk: list[CacheSource],
    vae: Any,
    key: CacheKey,
    factor: int,
    fill: float,
    encoder: Any | None,
    text_dim: int | None,
    device: torch.device | str,
) -> list[dict[str, str]]:
    payload: dict[str, Any] = {}
    written: list[str] = []
    origins: dict[str, str] = {}
    skipped: list[dict[str, str]] = []
    contexts: list[np.ndarray | None] = []
    pending: list[tuple[int, str]] = []
    text_sources: dict[str, str] = {}
    for src in chunk:
        try:
            case = src.load()
        except (CtragError, OSError, EOFError) as exc:
            skipped.append({"case_id": src.case_id, "reason": f"{type(exc).__name__}: {exc}"})
            logger.warning("latent cache: skipping unreadable %s (%s)", src.case_id, exc)
            continue
        if case.labels is None:
            raise DataValidationError(f"latent cache: case {case.case_id} has no label map")
        i = len(written)
        image = _pad_to(case.image, factor, fill)
        z_mu, _ = vae.encode(torch.from_numpy(np.ascontiguousarray(image))[None, None].to(device))
        payload[f"latent.{i}"] = z_mu[0].float().cpu().contiguous()
        payload[f"labels.{i}"] = torch.from_numpy(
            np.ascontiguousarray(_pad_to(case.labels, factor, 0).astype(np.uint8))
        )
        origins[case.case_id] = case.mask_origin
        contexts.append(case.context)
        text_sources[case.case_id] = case.text_source
        if case.context is None and src.text is not None and encoder is not None:
            pending.append((i, src.text))
            text_sources[case.case_id] = src.text_source
        written.append(case.case_id)
    if pending:
        vecs = np.asarray(encoder.encode_text([t for _, t in pending]), dtype=np.float32)  # type: ignore[union-attr]
        for (i, _), vec in zip(pending, vecs, strict=True):
            contexts[i] = vec
    dim = text_dim or next((int(c.shape[-1]) for c in contexts if c is not None), 1)
    ctx = torch.zeros(len(written), dim)
    for i, c in enumerate(contexts):
        if c is not None:
            if c.shape[-1] != dim:
                raise ConfigError(f"text embedding size {c.shape[-1]} differs from the cache's {dim}")
            ctx[i] = torch.from_numpy(np.asarray(c, dtype=np.float32))
    payload["context"] = ctx
    payload["has_text"] = torch.tensor([c is not None for c in contexts], dtype=torch.bool)
    data = root / f"{shard_name(index)}.pt"
    save_state_dict(payload, data)
    meta = {
        "format": CACHE_FORMAT,
        "key": key.as_dict(),
        "shard": index,
        "planned": [c.case_id for c in chunk],
        "cases": written,
        "mask_origins": origins,
        "text_sources": text_sources,
        "latent_shapes": [list(payload[f"latent.{i}"].shape) for i in range(len(written))],
        "skipped": skipped,
        "sha256": sha256_file(data),
    }
    atomic_write_text(root / f"{shard_name(index)}.json", json.dumps(meta, indent=1) + "\n")
    return skipped


# ------------------------------------------------------------------------------------------------ read


@dataclass(frozen=True)
class CacheEntry:
    shard: int
    position: int
    case_id: str
    latent_shape: tuple[int, int, int, int]


class LatentCache:
    """A finished cache opened for reading: the case index in memory (a few ints per case), shards on disk.

    A shard's checksum is verified the first time this process opens it; a process keeps one shard open."""

    def __init__(self, root: str | Path, key: CacheKey) -> None:
        self.root = Path(root)
        manifest = _read_json(self.root / MANIFEST)
        if manifest is None:
            raise InvalidInputError(f"{self.root} is not a latent cache (no readable {MANIFEST})")
        key.check(manifest.get("key", {}), f"latent cache {self.root}")
        if not manifest.get("complete"):
            raise InvalidInputError(f"latent cache {self.root} is unfinished; rerun the build to complete it")
        self.key = key
        self.config = dict(manifest["config"])
        self.skipped: list[dict[str, str]] = list(manifest.get("skipped", []))
        self.entries: list[CacheEntry] = []
        self.mask_origins: dict[str, str] = {}
        self._sha: dict[int, str] = {}
        has_text: list[bool] = []
        for s in range(int(manifest["n_shards"])):
            meta = _read_json(self.root / f"{shard_name(s)}.json")
            if meta is None:
                raise DataValidationError(f"latent cache {self.root}: {shard_name(s)}.json is missing or unreadable")
            key.check(meta.get("key", {}), f"cache shard {self.root / shard_name(s)}.pt")
            self._sha[s] = str(meta["sha256"])
            for pos, (cid, shape) in enumerate(zip(meta["cases"], meta["latent_shapes"], strict=True)):
                self.entries.append(CacheEntry(s, pos, cid, tuple(int(v) for v in shape)))  # type: ignore[arg-type]
                self.mask_origins[cid] = meta["mask_origins"].get(cid, "")
                has_text.append(meta["text_sources"].get(cid, "none") != "none")
        if not self.entries:
            raise InvalidInputError(f"latent cache {self.root} holds no readable case")
        self.has_text = torch.tensor(has_text, dtype=torch.bool)
        self.factor = int(self.config["downsample"])
        self._verified: set[int] = set()
        self._open: tuple[int, dict[str, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def content_key(self) -> str:
        """Hash of every shard's checksum: what a training run's resume key records about its data."""
        return sha256_json({"key": self.key.as_dict(), "shards": [self._sha[s] for s in sorted(self._sha)]})

    def verify(self) -> None:
        """Check every shard's checksum now (reading the whole cache once)."""
        for s in sorted(self._sha):
            self._check_shard(s)

    def _check_shard(self, s: int) -> None:
        path = self.root / f"{shard_name(s)}.pt"
        if not path.is_file():
            raise DataValidationError(f"latent cache shard {path} is missing")
        got = sha256_file(path)
        if got != self._sha[s]:
            raise DataValidationError(
                f"latent cache shard {path} fails its checksum (sha256 {got[:16]}…, recorded {self._sha[s][:16]}…); "
                "it is refused: rebuild the cache (the build redoes only failing shards)"
            )
        self._verified.add(s)

    def shard(self, s: int) -> dict[str, torch.Tensor]:
        if self._open is not None and self._open[0] == s:
            return self._open[1]
        if s not in self._verified:
            self._check_shard(s)
        self._open = None  # drop the previous mapping before opening the next
        data = torch.load(self.root / f"{shard_name(s)}.pt", map_location="cpu", weights_only=True, mmap=True)
        self._open = (s, data)
        return data

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """(latent (C,x,y,z), labels (X,Y,Z) uint8, context (D,), has_text) of entry ``index`` (memory-mapped)."""
        e = self.entries[index]
        data = self.shard(e.shard)
        return (
            data[f"latent.{e.position}"],
            data[f"labels.{e.position}"],
            data["context"][e.position],
            bool(data["has_text"][e.position]),
        )

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the index, not an open mapping
        state = dict(self.__dict__)
        state["_open"] = None
        return state
