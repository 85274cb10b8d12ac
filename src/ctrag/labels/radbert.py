"""The CT-RATE RadBERT report classifier, loaded from local files, as a label extractor for clinical efficacy.

Why it is here: published clinical-efficacy figures on CT-RATE (AdaRAG-CT 0.480, CT-CHAT 0.224 Clin-F1) read the 18
labels with this classifier, not with ``ctrag.labels.LabelExtractor``; comparing with them needs the same reader.
Its shape is a RadBERT-RoBERTa encoder whose pooled output feeds one 18-way linear layer, a sigmoid and a 0.5
threshold, on reports truncated to 512 tokens.

AdaRAG-CT's evaluation code loads the saved classifier with ``strict=False``, so a checkpoint whose keys do not
match (another head name, a head for another label count) silently scores with random weights. Here every key
must match: the head file holds ``classifier.weight`` / ``classifier.bias`` (or ``weight`` / ``bias``) and may
also hold the whole model (``bert.*`` keys, the encoder's weights, loaded strictly over the folder's); anything
missing or unexpected is refused with the keys listed. The one tolerated extra is ``bert.embeddings.position_ids``,
a constant buffer older ``transformers`` versions saved and newer ones no longer keep.

A report longer than 512 tokens is truncated as the original does, with a warning naming how many were cut
(``truncated`` counts them, for the results' notes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import CheckpointMismatchError, InvalidInputError, WeightsNotFoundError
from ctrag.utils.hashing import sha256_file, sha256_json

logger = logging.getLogger(__name__)

MAX_TOKENS = 512
THRESHOLD = 0.5
_IGNORED_EXTRA = ("bert.embeddings.position_ids",)


def split_head_state(state: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(head state with keys ``weight``/``bias``, encoder state without the ``bert.`` prefix) of a checkpoint."""
    head: dict[str, Any] = {}
    encoder: dict[str, Any] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        if key in ("weight", "bias"):
            head[key] = value
        elif key.startswith("classifier.") and key[len("classifier.") :] in ("weight", "bias"):
            head[key[len("classifier.") :]] = value
        elif key.startswith("bert."):
            if key not in _IGNORED_EXTRA:
                encoder[key[len("bert.") :]] = value
        else:
            unexpected.append(key)
    missing = [k for k in ("weight", "bias") if k not in head]
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source}: not a RadBERT classifier head: missing {[f'classifier.{k}' for k in missing]}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} (expected classifier.weight, "
            "classifier.bias and optionally the encoder's bert.* weights)"
        )
    return head, encoder


class RadBertClassifier:
    """18 CT-RATE labels from report text: ``predict_proba(texts) -> (n, 18)``, thresholds 0.5."""

    def __init__(
        self, tokenizer: Any, encoder: Any, head: Any, *, fingerprint: str, device: str = "cpu", batch_size: int = 8
    ) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.head = head
        self.fingerprint = fingerprint
        self.device = device
        self.batch_size = batch_size
        self.thresholds = np.full(len(CT_RATE_LABELS), THRESHOLD)
        self.truncated = 0
        """Reports cut at 512 tokens by the latest ``predict_proba`` call."""
        self.truncated_total = 0
        """The same over every call since construction (or since the caller reset it)."""

    @classmethod
    def load(
        cls, encoder_dir: str | os.PathLike[str], head_path: str | os.PathLike[str], *, device: str = "cpu"
    ) -> RadBertClassifier:
        """Encoder and tokenizer from a local folder (``AutoModel`` / ``AutoTokenizer``, never downloaded), head
        (and optionally the encoder's trained weights) from a checkpoint file, all keys checked."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        from ctrag.utils.checkpoints import load_checkpoint_file, load_strict

        folder = Path(encoder_dir).expanduser()
        if not (folder / "config.json").is_file():
            raise WeightsNotFoundError(
                f"--radbert-encoder {folder}: no config.json; give the local RadBERT-RoBERTa folder "
                "(config.json, weights and tokenizer files, as written by save_pretrained)"
            )
        head_file = Path(head_path).expanduser()
        state = load_checkpoint_file(head_file)
        if "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        head_state, encoder_state = split_head_state(state, str(head_file))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            encoder = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(f"--radbert-encoder {folder}: cannot load ({exc})") from exc
        if getattr(encoder, "pooler", None) is None:
            raise CheckpointMismatchError(
                f"--radbert-encoder {folder}: the model has no pooling layer; the classifier reads pooler_output"
            )
        if encoder_state:
            load_strict(encoder, encoder_state, f"{head_file} (bert.*)")
        hidden = int(encoder.config.hidden_size)
        head = torch.nn.Linear(hidden, len(CT_RATE_LABELS))
        load_strict(
            head,
            head_state,
            f"{head_file} (classifier.*)",
            hint=f"The head must map the encoder's {hidden}-d pooled output to the {len(CT_RATE_LABELS)} labels.",
        )
        fingerprint = sha256_json({"head": sha256_file(head_file), "config": encoder.config.to_dict()})[:16]
        return cls(tokenizer, encoder.to(device).eval(), head.to(device).eval(), fingerprint=fingerprint, device=device)

    def count_truncated(self, texts: Sequence[str]) -> int:
        lengths = [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]]
        return sum(n > MAX_TOKENS for n in lengths)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise InvalidInputError("RadBERT classifier: every report must be a string")
        self.truncated = self.count_truncated(texts) if texts else 0
        self.truncated_total += self.truncated
        if self.truncated:
            logger.warning(
                "RadBERT classifier: %d of %d report(s) longer than %d tokens were truncated, as in CT-RATE's "
                "classifier; labels stated only after the cut are not read",
                self.truncated,
                len(texts),
                MAX_TOKENS,
            )
        out = np.zeros((len(texts), len(CT_RATE_LABELS)), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    truncation=True,
                    max_length=MAX_TOKENS,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                batch.pop("token_type_ids", None)  # RoBERTa has one segment type
                pooled = self.encoder(**batch).pooler_output
                out[start : start + len(pooled)] = torch.sigmoid(self.head(pooled)).float().cpu().numpy()
        return out
