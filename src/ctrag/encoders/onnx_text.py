"""The default text encoder as an ONNX Runtime graph: the same vectors without importing torch or transformers.

A cold ``ctrag search`` spends most of its time importing torch and transformers to embed one report; the
FAISS lookup takes well under a millisecond. ``ctrag index`` therefore stores, beside the index, the mean-pooling
sentence encoder it used exported to ONNX together with its fast-tokenizer file (component
``text_encoder_onnx/``). A search then needs only ``onnxruntime`` and ``tokenizers``.

The export is only kept when it reproduces the torch encoder (minimum cosine over real reports at least
:data:`MIN_EXPORT_COSINE`), and the exported encoder then carries the *same fingerprint* as its source, because
an index and its queries must agree on the vectors, not on the runtime that computed them. Anything that could
change the vectors (tokenizer, sequence length, lower-casing, long-text mode) is written into the manifest and
applied identically here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.encoders.text import TextEncoderBase
from ctrag.errors import InvalidInputError, MissingDependencyError, WeightsNotFoundError
from ctrag.utils.hashing import sha256_file

ONNX_COMPONENT = "text_encoder_onnx"
"""Index component folder holding the exported text encoder."""
MANIFEST = "onnx_encoder.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MIN_EXPORT_COSINE = 0.9999
"""An export whose vectors differ more than this from the torch encoder's is refused (it would be another encoder)."""
OPSET = 18


class OnnxTextEncoder(TextEncoderBase):
    """Mean-pooling transformer encoder run by ONNX Runtime from a folder written by :func:`export_text_encoder`."""

    def __init__(self, folder: str | os.PathLike[str], *, threads: int | None = None) -> None:
        root = Path(folder)
        try:
            manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(f"{root}: no readable ONNX encoder manifest ({MANIFEST}): {exc}") from exc
        for name in (MODEL_FILE, TOKENIZER_FILE):
            if not (root / name).is_file():
                raise WeightsNotFoundError(f"{root}: {name} is missing; re-export with `ctrag index`")
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise MissingDependencyError(f"the ONNX text encoder needs onnxruntime and tokenizers ({exc})") from None
        super().__init__(
            name=str(manifest["name"]), long_text=str(manifest["long_text"]), weight_paths=[], batch_size=64
        )
        self.folder = root
        self.manifest = manifest
        self._fingerprint = str(manifest["fingerprint"])
        self._dim = int(manifest["dim"])
        self._max_seq_length = int(manifest["max_seq_length"])
        self._do_lower_case = bool(manifest["do_lower_case"])
        self._max_tokens = int(manifest["max_tokens"])
        self._tokenizer = Tokenizer.from_file(str(root / TOKENIZER_FILE))
        self._tokenizer.enable_truncation(max_length=self._max_seq_length)
        pad_id = int(manifest["pad_token_id"])
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=str(manifest["pad_token"]))
        self._counter = Tokenizer.from_file(str(root / TOKENIZER_FILE))  # counts what a text holds:
        self._counter.no_truncation()  # neither cut nor padded (the saved file may carry either setting)
        self._counter.no_padding()
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self._session = onnxruntime.InferenceSession(
            str(root / MODEL_FILE), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def settings(self) -> dict[str, Any]:  # the fingerprint is the source encoder's (see module docstring)
        return dict(self.manifest.get("source_settings") or {})

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in self._counter.encode_batch(self._prepare(texts), add_special_tokens=False)]

    def _prepare(self, texts: list[str]) -> list[str]:
        return [t.strip().lower() if self._do_lower_case else t.strip() for t in texts]

    def _embed(self, texts: list[str], batch_size: int, progress: bool) -> np.ndarray:
        items = self._prepare(texts)
        order = np.argsort([-len(t) for t in items], kind="stable")  # similar lengths share a batch: less padding
        out = np.empty((len(items), self._dim), dtype=np.float32)
        for start in range(0, len(items), batch_size):
            rows = order[start : start + batch_size]
            encoded = self._tokenizer.encode_batch([items[i] for i in rows])
            ids = np.asarray([e.ids for e in encoded], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encoded], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.asarray([e.type_ids for e in encoded], dtype=np.int64)
            hidden = np.asarray(self._session.run(["last_hidden_state"], feeds)[0], dtype=np.float32)
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out


class OnnxTextExport:
    """An exported encoder folder waiting to be saved as an index component (``save(directory)`` copies it)."""

    def __init__(self, folder: Path, min_cosine: float) -> None:
        self.folder = folder
        self.min_cosine = min_cosine

    def save(self, directory: str | os.PathLike[str]) -> Path:
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, TOKENIZER_FILE, MANIFEST):
            shutil.copy2(self.folder / name, target / name)
        return target


def can_export(encoder: Any) -> bool:
    """True for a mean-pooling sentence encoder run with ``transformers`` (the packaged MiniLM and its kind)."""
    from ctrag.encoders.text import SentenceTransformerEncoder, _MeanPoolModel

    inner = getattr(encoder, "inner", encoder)  # a MemoTextEncoder wraps the real one
    return isinstance(inner, SentenceTransformerEncoder) and isinstance(inner.model, _MeanPoolModel)


def export_text_encoder(encoder: Any, check_texts: Sequence[str], out_dir: str | os.PathLike[str]) -> OnnxTextExport:
    """Export ``encoder`` (see :func:`can_export`) to ``out_dir`` and check it on ``check_texts`` (real reports).

    Raises ``InvalidInputError`` for an encoder that cannot be exported or an export whose vectors differ.
    """
    import torch

    from ctrag.encoders.text import SentenceTransformerEncoder

    if not can_export(encoder):
        raise InvalidInputError(f"encoder {getattr(encoder, 'name', encoder)!r} is not a mean-pooling text encoder")
    inner: SentenceTransformerEncoder = getattr(encoder, "inner", encoder)
    texts = [t for t in check_texts if t.strip()]
    if not texts:
        raise InvalidInputError("the ONNX export needs at least one report to check the exported vectors on")
    model = inner.model
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Two texts of different lengths: the traced graph must contain the padding-mask path (a batch without
    # padding lets transformers skip the mask, and the export would ignore attention_mask).
    example = model.tokenizer(["a chest CT report", "no"], padding=True, return_tensors="pt")
    with_types = "token_type_ids" in example
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if with_types else [])]
    network = model.network.eval()

    class _Hidden(torch.nn.Module):
        """Named inputs: the torch.export-based exporter needs them (the TorchScript one mis-traces the
        attention mask of this transformers version: vectors off by cosine 0.95)."""

        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
        ) -> torch.Tensor:
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            hidden: torch.Tensor = self.network(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]
            return hidden

    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens", max=int(model.max_seq_length or 512))
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            _Hidden(),
            tuple(example[n] for n in names),
            str(out / MODEL_FILE),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_shapes={n: {0: batch, 1: tokens} for n in names},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    model.tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    manifest = {
        "format": 1,
        "name": inner.name,
        "fingerprint": inner.fingerprint,
        "dim": inner.dim,
        "long_text": inner.long_text,
        "max_seq_length": int(model.max_seq_length or 0),
        "max_tokens": inner.max_tokens,
        "do_lower_case": bool(model.do_lower_case),
        "pad_token": str(model.tokenizer.pad_token),
        "pad_token_id": int(model.tokenizer.pad_token_id),
        "source_settings": inner.settings(),
        "model_sha256": sha256_file(out / MODEL_FILE),
        "opset": OPSET,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    quiet = logging.getLogger("ctrag.encoders.text")  # the check texts are cut on purpose; no warning for that
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        reference = inner.encode_text(texts)
        exported = OnnxTextEncoder(out).encode_text(texts)
    finally:
        quiet.setLevel(level)
    min_cosine = float(np.min(np.sum(reference * exported, axis=1)))
    manifest["check"] = {"reports": len(texts), "min_cosine": round(min_cosine, 7)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if min_cosine < MIN_EXPORT_COSINE:
        raise InvalidInputError(
            f"the ONNX export of {inner.name} differs from the torch encoder (min cosine {min_cosine:.5f} < "
            f"{MIN_EXPORT_COSINE}) on {len(texts)} reports; not using it"
        )
    return OnnxTextExport(out, min_cosine)
