"""CT-CLIP weights (CT-RATE's vision-language model) as a ctrag ``Encoder``, loaded from local files only.

CT-CLIP's ``CTCLIP`` module (github.com/ibrahimethemhamamci/CT-CLIP, ``CT_CLIP/ct_clip/ct_clip.py``) holds:

* ``text_transformer.*`` — a Hugging Face ``BertModel`` (microsoft/BiomedVLP-CXR-BERT-specialized, fine-tuned);
  the text feature is the [CLS] position of the last hidden state;
* ``to_text_latent.weight`` — ``Linear(768, 512, bias=False)``;
* ``visual_transformer.*`` — CTViT (``transformer_maskgit``), see ``ctrag.encoders.ctvit``;
* ``to_visual_latent.weight`` — ``Linear(294912, 512, bias=False)`` on the slab-averaged, flattened token grid;
* ``to_text_latent_extra``/``to_visual_latent_extra``/``temperature`` — unused at inference (the CLOOB-style
  extra projections are off in the released model).

Loading maps every key explicitly: the checkpoint's text keys must fill the ``BertModel`` built from the local
CXR-BERT folder's ``config.json`` exactly (the pooler is dropped on purpose), the volume keys go through
``ctvit.map_ctvit_keys``, and any key nobody accounts for is an error. The CXR-BERT folder supplies the config and
tokenizer; its own weights (if present) are not used, because CT-CLIP fine-tuned the text tower.

Inputs: text as in CT-CLIP's data loader (quotes/apostrophes/parentheses stripped, lower-cased WordPiece, up to
512 tokens); volumes as ``(n, 1, 240, 480, 480)`` in [-1, 1] from ``ct_clip_preprocess``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctrag.encoders.base import l2_normalise
from ctrag.encoders.ctvit import CTViTConfig, CTViTEncoder, load_ctvit_state
from ctrag.encoders.hf_text import load_linear_strict
from ctrag.encoders.text import TextEncoderBase
from ctrag.encoders.volume import check_volume_batch
from ctrag.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError
from ctrag.utils.checkpoints import load_checkpoint_file

logger = logging.getLogger(__name__)

TEXT_PREFIX = "text_transformer."
VISUAL_PREFIX = "visual_transformer."
#: Top-level CT-CLIP keys that inference does not use.
UNUSED_TOP_KEYS = frozenset({"to_text_latent_extra.weight", "to_visual_latent_extra.weight", "temperature"})


@dataclass(frozen=True)
class CTCLIPTextConfig:
    hidden_size: int = 768
    max_length: int = 512
    lowercase: bool = True
    strip_chars: str = "\"'()"
    latent_dim: int = 512


def load_checkpoint_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a CT-CLIP ``.pt`` state dict on the CPU with ``weights_only=True`` (no pickled code runs)."""
    obj: Any = load_checkpoint_file(path)
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{path}: expected a CT-CLIP state dict (name -> tensor)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def split_ct_clip_state(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Partition a CT-CLIP state dict into ``text``, ``text_proj``, ``visual``, ``visual_proj``, ``unused``."""
    parts: dict[str, dict[str, torch.Tensor]] = {
        k: {} for k in ("text", "text_proj", "visual", "visual_proj", "unused")
    }
    unknown = []
    for key, value in state.items():
        if key.startswith(TEXT_PREFIX):
            parts["text"][key.removeprefix(TEXT_PREFIX)] = value
        elif key.startswith(VISUAL_PREFIX):
            parts["visual"][key.removeprefix(VISUAL_PREFIX)] = value
        elif key.startswith("to_text_latent.") and key not in UNUSED_TOP_KEYS:
            parts["text_proj"][key.removeprefix("to_text_latent.")] = value
        elif key.startswith("to_visual_latent.") and key not in UNUSED_TOP_KEYS:
            parts["visual_proj"][key.removeprefix("to_visual_latent.")] = value
        elif key in UNUSED_TOP_KEYS:
            parts["unused"][key] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(f"not a CT-CLIP checkpoint: unrecognised keys {sorted(unknown)[:10]}")
    if not parts["text"] or not parts["text_proj"]:
        raise CheckpointMismatchError(
            "CT-CLIP checkpoint lacks the text tower (text_transformer.*) or its projection (to_text_latent.weight)"
        )
    return parts


def load_bert_text_tower(model: torch.nn.Module, text_state: Mapping[str, torch.Tensor]) -> list[str]:
    """Load CT-CLIP's ``text_transformer.*`` into a pooler-less ``BertModel``; strict apart from listed drops."""
    dropped = [k for k in text_state if k.startswith("pooler.")]
    state = {k: v for k, v in text_state.items() if not k.startswith("pooler.")}
    # Older transformers saved position_ids as a persistent buffer; it is a fixed arange, so check and drop it.
    pos_key = "embeddings.position_ids"
    own = model.state_dict()
    if pos_key in state and pos_key not in own:
        pos = state.pop(pos_key)
        if not torch.equal(pos.reshape(-1), torch.arange(pos.numel(), dtype=pos.dtype)):
            raise CheckpointMismatchError(f"text tower: {pos_key} is not 0..n-1; refusing to drop it")
        dropped.append(pos_key)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"CT-CLIP text tower does not fit the BERT config: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointMismatchError(f"CT-CLIP text tower: shape mismatch (checkpoint vs config): {bad[:6]}")
    model.load_state_dict(state, strict=True)
    return dropped


class CTCLIPEncoder(TextEncoderBase):
    """CT-CLIP text tower (and, when present in the checkpoint, its CTViT volume tower) in the 512-d latent space."""

    def __init__(
        self,
        checkpoint: str | os.PathLike[str],
        text_model: str | os.PathLike[str],
        *,
        name: str = "ct-clip",
        text_cfg: CTCLIPTextConfig | None = None,
        vision_cfg: CTViTConfig | None = None,
        load_volume_tower: bool = True,
        long_text: str = "truncate",
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        text_dir = Path(text_model)
        if not text_dir.is_dir() or not (text_dir / "config.json").is_file():
            raise WeightsNotFoundError(
                f"CXR-BERT folder not found or without config.json: {text_dir} "
                "(needs config.json + tokenizer files of microsoft/BiomedVLP-CXR-BERT-specialized)"
            )
        ckpt = Path(checkpoint)
        super().__init__(name=name, long_text=long_text, weight_paths=[ckpt, text_dir], batch_size=batch_size)
        self.text_cfg = text_cfg or CTCLIPTextConfig()
        self.vision_cfg = vision_cfg or CTViTConfig()
        self.device = device
        parts = split_ct_clip_state(load_checkpoint_state(ckpt))

        from transformers import AutoConfig, AutoTokenizer, BertModel

        self.tokenizer = AutoTokenizer.from_pretrained(
            str(text_dir), local_files_only=True, do_lower_case=self.text_cfg.lowercase
        )
        config = AutoConfig.from_pretrained(str(text_dir), local_files_only=True)
        rows = parts["text"].get("embeddings.word_embeddings.weight")
        if rows is not None and rows.shape[0] != config.vocab_size:
            # CT-CLIP calls resize_token_embeddings(len(tokenizer)); accept exactly that case.
            if rows.shape[0] != len(self.tokenizer):
                raise CheckpointMismatchError(
                    f"CT-CLIP text embeddings have {rows.shape[0]} rows; config vocab {config.vocab_size}, "
                    f"tokenizer {len(self.tokenizer)}"
                )
            config.vocab_size = int(rows.shape[0])
        if int(config.hidden_size) != self.text_cfg.hidden_size:
            raise CheckpointMismatchError(
                f"{text_dir}: hidden_size {config.hidden_size}, CT-CLIP config expects {self.text_cfg.hidden_size}"
            )
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropped_keys = load_bert_text_tower(self.bert, parts["text"])
        self.bert.to(device).eval()  # type: ignore[arg-type]
        self.to_text_latent = torch.nn.Linear(config.hidden_size, self.text_cfg.latent_dim, bias=False)
        load_linear_strict(self.to_text_latent, parts["text_proj"], "CT-CLIP to_text_latent")
        self.to_text_latent.to(device).eval()
        self.dropped_keys += sorted(parts["unused"])

        self.vision: CTViTEncoder | None = None
        self.to_visual_latent: torch.nn.Linear | None = None
        if load_volume_tower and parts["visual"]:
            self.vision = CTViTEncoder(self.vision_cfg)
            self.dropped_keys += load_ctvit_state(self.vision, parts["visual"])
            self.to_visual_latent = torch.nn.Linear(
                self.vision_cfg.pooled_features, self.text_cfg.latent_dim, bias=False
            )
            load_linear_strict(self.to_visual_latent, parts["visual_proj"], "CT-CLIP to_visual_latent")
            self.vision.to(device).eval()
            self.to_visual_latent.to(device).eval()
        elif load_volume_tower:
            logger.warning("%s has no visual_transformer.* keys; this encoder is text-only", ckpt)
        logger.info("CT-CLIP loaded from %s; %d keys dropped on purpose", ckpt, len(self.dropped_keys))

    @property
    def dim(self) -> int:
        return self.text_cfg.latent_dim

    @property
    def supports_volume(self) -> bool:
        return self.vision is not None

    @property
    def max_tokens(self) -> int:
        return self.text_cfg.max_length - int(self.tokenizer.num_special_tokens_to_add(pair=False))

    def settings(self) -> dict[str, Any]:
        return {
            "kind": "ct-clip",
            "text": asdict(self.text_cfg),
            "vision": asdict(self.vision_cfg) if self.vision is not None else None,
        }

    def clean(self, text: str) -> str:
        """CT-CLIP's training-time text cleaning (removes ``strip_chars``)."""
        return text.translate(str.maketrans("", "", self.text_cfg.strip_chars)) if self.text_cfg.strip_chars else text

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        enc = self.tokenizer(
            [self.clean(t) for t in texts], add_special_tokens=False, return_attention_mask=False, verbose=False
        )
        return [len(ids) for ids in enc["input_ids"]]

    @torch.inference_mode()
    def _embed(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [self.clean(texts[i]) for i in idx],
                padding=True,  # CT-CLIP pads to 512; with the attention mask the [CLS] output is the same
                truncation=True,
                max_length=self.text_cfg.max_length,
                return_tensors="pt",
            ).to(self.device)
            cls = self.bert(**batch).last_hidden_state[:, 0]
            out[idx] = F.normalize(self.to_text_latent(cls).float(), dim=-1).cpu().numpy()
        return out

    @torch.inference_mode()
    def encode_volume(self, volumes: torch.Tensor, batch_size: int = 1) -> np.ndarray:
        """(n, 1, 240, 480, 480) CT-CLIP-preprocessed volumes in [-1, 1] -> (n, 512) normalised latents."""
        if self.vision is None or self.to_visual_latent is None:
            raise InvalidInputError(
                f"{self.name}: no volume tower loaded (the checkpoint has no visual_transformer.* keys, or "
                "load_volume_tower=False)"
            )
        check_volume_batch(volumes, self.vision_cfg.channels, value_range=(-1.0, 1.0))
        out = []
        for start in range(0, volumes.shape[0], batch_size):
            batch = volumes[start : start + batch_size].to(self.device, torch.float32)
            out.append(F.normalize(self.to_visual_latent(self.vision.pooled(batch)), dim=-1).cpu().numpy())
        return l2_normalise(np.concatenate(out, axis=0))


def ct_clip_preprocess(
    array_ijk: np.ndarray,
    spacing_ijk: Sequence[float],
    *,
    target_spacing_ijk: Sequence[float] = (0.75, 0.75, 1.5),
    grid_ijk: Sequence[int] = (480, 480, 240),
) -> torch.Tensor:
    """CT-CLIP's volume preparation: HU clip [-1000, 1000] -> /1000, resample, centre crop/pad with -1.

    ``array_ijk`` is the HU array as nibabel reads it (no reorientation, like CT-CLIP's loader). Returns
    ``(1, k, i, j)``, the layout CT-CLIP feeds CTViT (slices first).
    """
    arr = np.clip(np.asarray(array_ijk, dtype=np.float32), -1000.0, 1000.0)
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None, None]  # (1, 1, k, i, j)
    cur = (spacing_ijk[2], spacing_ijk[0], spacing_ijk[1])
    tgt = (target_spacing_ijk[2], target_spacing_ijk[0], target_spacing_ijk[1])
    size = [int(n * (c / g)) for n, c, g in zip(t.shape[2:], cur, tgt, strict=True)]
    t = F.interpolate(t, size=size, mode="trilinear", align_corners=False)[0, 0] / 1000.0
    want = (grid_ijk[2], grid_ijk[0], grid_ijk[1])
    for axis, target in enumerate(want):
        n = t.shape[axis]
        if n > target:
            t = t.narrow(axis, (n - target) // 2, target)
        elif n < target:
            before = (target - n) // 2
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)], pad[2 * (2 - axis) + 1] = before, target - n - before
            t = F.pad(t, pad, value=-1.0)
    return t.contiguous()[None]
