"""Streaming latent crops from the on-disk cache (``latent_cache.py``) with torch DataLoader workers.

The training loop asks ``make_batch(step, gens)`` for each micro-batch, one generator per sample; everything random
about a sample's crop is drawn from its generator (as the memory path does), so resumed runs stay exact on any
number of processes. To let workers read ahead, the batch sampler walks the same (step, micro-batch) sequence as
the loop (``engine.micro_batch_indices`` for this rank), redraws the crop positions from fresh
``sample_generator(seed, k, i)``, and ``make_batch`` checks that the batch it receives is the one it drew.

Two ways to draw crops (``TrainDataConfig.sampling``):

* ``bank``: ``bank_crops`` crop positions drawn once, consuming the random stream exactly as
  ``data.build_latent_bank`` does, then one of them per sample as ``data.bank_batches`` does; when the
  crop is the whole (padded) volume this reproduces the memory path's batches and losses;
* ``fresh``: new (case, position) draws every step, so a large corpus is actually seen.

Crops are never mirrored here (``TrainControlNetConfig`` refuses ``flip_prob > 0`` with the cache source):
a mirrored latent is not the latent of the mirrored CT.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ctrag.errors import DataValidationError
from ctrag.generation.training.engine import Generators, micro_batch_indices, sample_generator, step_generator
from ctrag.generation.training.latent_cache import LatentCache

logger = logging.getLogger(__name__)

BANK_ENCODE_BATCH = 4
"""The batch ``build_latent_bank`` encodes with: its random draws come in groups of this size."""


@dataclass(frozen=True)
class CropSpec:
    """Which crop a batch element is: cache entry and its start in latent voxels."""

    step: int
    entry: int
    start: tuple[int, int, int]


class CropDrawer:
    """Draws a step's crop specs from a generator (the same draws in the loop and in the batch sampler)."""

    def __init__(
        self,
        cache: LatentCache,
        crop_shape: Sequence[int],
        *,
        sampling: str = "bank",
        bank_crops: int = 256,
        seed: int = 0,
    ) -> None:
        f = cache.factor
        if any(int(k) % f for k in crop_shape):
            raise DataValidationError(f"crop {tuple(crop_shape)} is not a multiple of the VAE downsampling {f}")
        self.latent_crop = tuple(int(k) // f for k in crop_shape)
        self.sizes = torch.tensor([e.latent_shape[1:] for e in cache.entries], dtype=torch.int64)
        small = (self.sizes < torch.tensor(self.latent_crop)).any(dim=1)
        if bool(small.any()):
            bad = [cache.entries[i].case_id for i in torch.nonzero(small).flatten().tolist()[:5]]
            raise DataValidationError(f"cached cases smaller than the crop {tuple(crop_shape)}: {bad}")
        self.n = len(cache)
        self.sampling = sampling
        self.bank: torch.Tensor | None = None
        if sampling == "bank":
            self.bank = self._draw_bank(bank_crops, seed)

    def _draw_one(self, idx: torch.Tensor, gen: torch.Generator) -> list[tuple[int, tuple[int, int, int]]]:
        """Starts (and the unused flip draw) per index, in the order ``CropSampler.sample`` consumes them."""
        out = []
        for i in idx.tolist():
            start = tuple(
                int(torch.randint(0, int(s) - k + 1, (1,), generator=gen))
                for s, k in zip(self.sizes[i].tolist(), self.latent_crop, strict=True)
            )
            torch.rand(1, generator=gen)  # the flip draw: kept so every other draw matches the memory path
            out.append((int(i), start))
        return out  # type: ignore[return-value]

    def _weights(self) -> torch.Tensor:
        return torch.full((self.n,), 1.0 / self.n, dtype=torch.float64)

    def _draw_bank(self, n: int, seed: int) -> torch.Tensor:
        gen = step_generator(seed, 0, stream=1)
        rows: list[list[int]] = []
        while len(rows) < n:
            b = min(BANK_ENCODE_BATCH, n - len(rows))
            idx = torch.multinomial(self._weights(), b, replacement=True, generator=gen)
            rows.extend([i, *start] for i, start in self._draw_one(idx, gen))
        return torch.tensor(rows, dtype=torch.int64)

    def draw(self, step: int, gens: Generators) -> list[CropSpec]:
        """One crop per sample generator: a bank row as ``data.bank_batches`` picks it, or a fresh draw."""
        if self.bank is not None:
            pick = torch.cat([torch.randint(0, len(self.bank), (1,), generator=g) for g in gens])
            rows = self.bank[pick].tolist()
            return [CropSpec(step, r[0], (r[1], r[2], r[3])) for r in rows]
        out: list[CropSpec] = []
        for g in gens:
            idx = torch.multinomial(self._weights(), 1, replacement=True, generator=g)
            out.extend(CropSpec(step, i, s) for i, s in self._draw_one(idx, g))
        return out


class LatentCropDataset(Dataset[dict[str, Any]]):
    """Map-style dataset indexed by ``CropSpec``: reads the crop from its shard (lazily, per worker)."""

    def __init__(self, cache: LatentCache, latent_crop: Sequence[int], with_text: bool) -> None:
        self.cache = cache
        self.latent_crop = tuple(int(v) for v in latent_crop)
        self.with_text = with_text

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, spec: CropSpec) -> dict[str, Any]:
        latent, labels, context, has_text = self.cache.read(spec.entry)
        f = self.cache.factor
        sl = tuple(slice(a, a + k) for a, k in zip(spec.start, self.latent_crop, strict=True))
        sli = tuple(slice(a * f, (a + k) * f) for a, k in zip(spec.start, self.latent_crop, strict=True))
        item: dict[str, Any] = {
            "latents": latent[(slice(None), *sl)].clone(),
            "labels": labels[sli].clone()[None],
            "case_index": spec.entry,
            "step": spec.step,
        }
        if self.with_text:
            item["context"] = context.clone()[None]
            item["has_text"] = has_text
        return item


def collate_crops(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "latents": torch.stack([i["latents"] for i in items]),
        "labels": torch.stack([i["labels"] for i in items]),
        "case_index": torch.tensor([i["case_index"] for i in items], dtype=torch.int64),
        "step": items[0]["step"],
    }
    if "context" in items[0]:
        batch["context"] = torch.stack([i["context"] for i in items])
        batch["has_text"] = torch.tensor([i["has_text"] for i in items], dtype=torch.bool)
    return batch


@dataclass(frozen=True)
class BatchSplit:
    """How a step's global batch is split: over ``world_size`` ranks, then ``accum_steps`` micro-batches."""

    batch_size: int
    world_size: int = 1
    rank: int = 0
    accum_steps: int = 1

    def indices(self, micro: int) -> range:
        return micro_batch_indices(self.batch_size, self.world_size, self.rank, self.accum_steps, micro)


class _StepBatches(Sampler[list[CropSpec]]):
    """Steps ``start..end-1``, each as this rank's micro-batches of crop specs, in the order the loop draws them."""

    def __init__(self, drawer: CropDrawer, seed: int, split: BatchSplit, start: int, end: int) -> None:
        self.drawer, self.seed, self.split, self.start, self.end = drawer, seed, split, start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.split.accum_steps

    def __iter__(self) -> Iterator[list[CropSpec]]:
        for step in range(self.start, self.end):
            for micro in range(self.split.accum_steps):
                gens = [sample_generator(self.seed, step, i) for i in self.split.indices(micro)]
                yield self.drawer.draw(step, gens)


class StreamingBatches:
    """``make_batch`` for ``TrainLoop`` reading crops through a DataLoader (workers read ahead)."""

    def __init__(
        self,
        dataset: LatentCropDataset,
        drawer: CropDrawer,
        *,
        seed: int,
        total_steps: int,
        split: BatchSplit,
        num_workers: int = 0,
    ) -> None:
        self.dataset, self.drawer = dataset, drawer
        self.seed, self.split, self.total_steps, self.num_workers = seed, split, total_steps, num_workers
        self._it: Iterator[Mapping[str, Any]] | None = None
        self._next = (-1, 0)

    def _start(self, step: int) -> None:
        loader = DataLoader(
            self.dataset,
            batch_sampler=_StepBatches(self.drawer, self.seed, self.split, step, self.total_steps),
            num_workers=self.num_workers,
            collate_fn=collate_crops,
            prefetch_factor=2 if self.num_workers else None,
        )
        self._it = iter(loader)
        self._next = (step, 0)

    def __call__(self, step: int, gens: Generators) -> Mapping[str, Any]:
        specs = self.drawer.draw(step, gens)  # advances the samples' generators as the memory path does
        if self._it is None or self._next[0] != step:
            self._start(step)  # a (re)start is always at a step's first micro-batch
        assert self._it is not None
        batch = next(self._it)
        micro = self._next[1] + 1
        self._next = (step + 1, 0) if micro == self.split.accum_steps else (step, micro)
        if batch["step"] != step or batch["case_index"].tolist() != [s.entry for s in specs]:
            raise RuntimeError(f"streamed batch for step {batch['step']} does not match step {step}'s draw")
        return batch

    def close(self) -> None:
        """Stop the workers (a finished or interrupted run leaves none behind)."""
        self._it = None
