"""A plain Hugging Face text model from a local folder as a ctrag text encoder.

Loads ``AutoTokenizer`` + ``AutoModel`` with ``local_files_only=True`` (no hub access), pools the last hidden
state (``mean`` over non-padding tokens, or the ``cls`` token), optionally applies a linear projection whose
weights come from a separate file (e.g. a CLIP-style text head), and L2-normalises. Loading the projection is
strict: the file must hold exactly ``weight`` (and ``bias`` when the layer has one) with matching shapes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ctrag.encoders.text import TextEncoderBase
from ctrag.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError
from ctrag.utils.checkpoints import load_checkpoint_file

Pooling = Literal["mean", "cls"]


def load_tensor_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``: no pickled code runs)."""
    obj = load_checkpoint_file(path)
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{path}: expected a flat state dict of tensors")
    return dict(obj)


def load_linear_strict(layer: torch.nn.Linear, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy ``weight``/``bias`` into ``layer``; any missing, extra or mis-shaped key is an error."""
    expected = {"weight"} | ({"bias"} if layer.bias is not None else set())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(f"{where}: missing keys {missing}, unexpected keys {unexpected}")
    for key in expected:
        target = getattr(layer, key)
        if tuple(state[key].shape) != tuple(target.shape):
            raise CheckpointMismatchError(
                f"{where}: {key} has shape {tuple(state[key].shape)}, the layer needs {tuple(target.shape)}"
            )
    layer.load_state_dict(dict(state), strict=True)


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(b, t, d) hidden states -> (b, d): masked mean over real tokens, or the first ([CLS]) token."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class HFTextEncoder(TextEncoderBase):
    """``AutoModel`` + tokenizer from a local folder; mean or CLS pooling; optional linear projection."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        name: str = "hf-text",
        pooling: str = "mean",
        max_length: int = 512,
        projection_path: str | os.PathLike[str] | None = None,
        projection_dim: int | None = None,
        projection_bias: bool = False,
        long_text: str = "truncate",
        device: str = "cpu",
        batch_size: int = 16,
    ) -> None:
        path = Path(model_path)
        if not path.is_dir():
            raise WeightsNotFoundError(f"Hugging Face model folder not found: {path}")
        if not (path / "config.json").is_file():
            raise WeightsNotFoundError(f"{path} has no config.json; expected a folder written by save_pretrained")
        if pooling not in ("mean", "cls"):
            raise InvalidInputError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        weights = [path] + ([Path(projection_path)] if projection_path is not None else [])
        super().__init__(name=name, long_text=long_text, weight_paths=weights, batch_size=batch_size)
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.pooling = pooling
        self.device = device
        model_limit = int(getattr(self.model.config, "max_position_embeddings", max_length) or max_length)
        self.max_length = min(int(max_length), model_limit)
        hidden = int(self.model.config.hidden_size)
        self.projection: torch.nn.Linear | None = None
        if projection_path is not None:
            state = _strip_prefix(load_tensor_file(projection_path))
            if "weight" not in state:
                raise CheckpointMismatchError(f"{projection_path}: no 'weight' tensor for the projection")
            out_dim = int(state["weight"].shape[0])
            if projection_dim is not None and int(projection_dim) != out_dim:
                raise CheckpointMismatchError(
                    f"{projection_path}: projection maps to {out_dim} dims, the config says {projection_dim}"
                )
            self.projection = torch.nn.Linear(hidden, out_dim, bias=projection_bias)
            load_linear_strict(self.projection, state, f"projection {projection_path}")
            self.projection.to(device).eval()
        elif projection_dim is not None:
            raise InvalidInputError("projection_dim was given without projection_path (a random head is useless)")
        self._dim = self.projection.out_features if self.projection is not None else hidden
        self._projection_bias = projection_bias

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_tokens(self) -> int:
        return self.max_length - int(self.tokenizer.num_special_tokens_to_add(pair=False))

    def settings(self) -> dict[str, Any]:
        return {
            "kind": "hf-text",
            "pooling": self.pooling,
            "max_length": self.max_length,
            "projection": None if self.projection is None else [self.projection.out_features, self._projection_bias],
        }

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        enc = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    @torch.inference_mode()
    def _embed(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        # Sorting by length keeps padding (wasted compute) small; the original order is restored at the end.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"encode {self.name}", unit="batch")
        for start in starts:
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            vec = pool_hidden(hidden, batch["attention_mask"], self.pooling)
            if self.projection is not None:
                vec = self.projection(vec)
            out[idx] = torch.nn.functional.normalize(vec.float(), dim=-1).cpu().numpy()
        return out


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept ``{"weight"}`` or a single-module dict like ``{"proj.weight", "proj.bias"}``."""
    prefixes = {k.rsplit(".", 1)[0] for k in state if "." in k}
    if len(prefixes) == 1 and all("." in k for k in state):
        prefix = prefixes.pop() + "."
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state
