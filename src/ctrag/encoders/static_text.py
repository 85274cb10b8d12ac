"""A static-embedding text encoder distilled here from the packaged MiniLM: one vector per WordPiece token.

Why: MiniLM runs six transformer layers over every token of every report, which gives 5–9 reports/s on 2 CPU
cores (ONNX Runtime fp32 is no faster on this CPU, int8 neither). A static encoder looks each token up in a table
and averages, so a report costs one tokenisation and one weighted sum: thousands of reports/s, with no torch.

How the table is made (:func:`distill_static_encoder`, the idea of model2vec, written here from scratch):

1. every token of the source tokenizer's vocabulary is embedded *alone* by the source encoder, as the input
   ``[CLS] token [SEP]`` mean-pooled exactly like the source pools a report;
2. optionally, PCA fitted on those token vectors (centred: removing the mean removes the direction all tokens
   share, which would otherwise dominate every report vector) keeps the first ``pca_dims`` components;
3. each token gets a frequency weight ``a / (a + p(token))`` (smooth inverse frequency), ``p`` counted over the
   **train split reports only**, so frequent filler tokens ("the", ".", "is") count less than findings.

A report vector is the L2-normalised weighted mean of the vectors of all its tokens: the whole report is read
(no 256-token window, unlike MiniLM's truncation).

The vectors differ from MiniLM's, so this is a different encoder with its own fingerprint: it covers the token
table, the weights, the tokenizer file and the settings (including the source encoder's fingerprint); an index
built with one refuses queries from the other. Encoding imports numpy and ``tokenizers`` only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ctrag.encoders.base import Encoder, l2_normalise
from ctrag.encoders.fingerprint import make_fingerprint
from ctrag.encoders.long_text import check_texts
from ctrag.errors import InvalidInputError, MissingDependencyError, WeightsNotFoundError
from ctrag.utils.hashing import sha256_file
from ctrag.utils.progress import ProgressFn

if TYPE_CHECKING:
    from ctrag.data.case import Case
    from ctrag.encoders.text import SentenceTransformerEncoder

logger = logging.getLogger(__name__)

NAME = "minilm-static"
"""Registry name of the encoder (``create_encoder("minilm-static", weights=FOLDER)``)."""
MANIFEST = "static_encoder.json"
TABLE_FILE = "token_vectors.npy"
WEIGHTS_FILE = "token_weights.npy"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = 1
DISTILL_SPLIT = "train"
"""The only split whose reports the frequency weights are counted on (val/test stay unseen)."""


@dataclass(frozen=True)
class StaticDistillConfig:
    """Settings of a distillation; all of them change the vectors and go into the manifest and fingerprint."""

    pca_dims: int | None = 256
    """Components kept by PCA on the token vectors; ``None`` keeps the source dimension (no PCA)."""
    sif_a: float = 1e-3
    """Smooth-inverse-frequency constant: weight = a / (a + p(token)); smaller a down-weights frequent tokens more."""
    normalise_tokens: bool = True
    """L2-normalise each token vector before PCA, so only the frequency weight decides a token's share."""
    batch_size: int = 1024
    """Vocabulary tokens embedded per source-encoder batch (speed only; not a vector-changing setting)."""

    def __post_init__(self) -> None:
        if self.pca_dims is not None and self.pca_dims < 1:
            raise InvalidInputError(f"pca_dims must be >= 1 or None, got {self.pca_dims}")
        if not self.sif_a > 0:
            raise InvalidInputError(f"sif_a must be > 0, got {self.sif_a}")
        if self.batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {self.batch_size}")

    def vector_settings(self) -> dict[str, Any]:
        settings = asdict(self)
        settings.pop("batch_size")
        return settings


# ----------------------------------------------------------------------------------------------- encoder


def _load_tokenizer(path: Path) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - a dependency of transformers and of the ONNX encoder
        raise MissingDependencyError(f"the static text encoder needs the 'tokenizers' package ({exc})") from None
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()  # the whole report is read; the saved file may carry the source's 256 cut
    tokenizer.no_padding()
    return tokenizer


class StaticTextEncoder(Encoder):
    """Weighted mean of per-token vectors, loaded from a folder written by :func:`distill_static_encoder`."""

    def __init__(self, folder: str | os.PathLike[str], *, name: str = NAME, batch_size: int = 256) -> None:
        root = Path(folder)
        if not root.is_dir():
            raise WeightsNotFoundError(
                f"static encoder folder not found: {root} (write one with `ctrag encoders distill-static`)"
            )
        try:
            manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(f"{root}: no readable static encoder manifest ({MANIFEST}): {exc}") from exc
        if manifest.get("format") != FORMAT:
            raise WeightsNotFoundError(f"{root}: static encoder format {manifest.get('format')!r}, expected {FORMAT}")
        for file in (TABLE_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
            if not (root / file).is_file():
                raise WeightsNotFoundError(f"{root}: {file} is missing; distil the folder again")
        self.name = name
        self.folder = root
        self.manifest = manifest
        self.default_batch_size = int(batch_size)
        self._table = np.load(root / TABLE_FILE, allow_pickle=False).astype(np.float32, copy=False)
        self._weights = np.load(root / WEIGHTS_FILE, allow_pickle=False).astype(np.float32, copy=False)
        if self._table.ndim != 2 or self._weights.shape != (self._table.shape[0],):
            raise WeightsNotFoundError(
                f"{root}: token table {self._table.shape} and weights {self._weights.shape} do not fit together"
            )
        self._tokenizer = _load_tokenizer(root / TOKENIZER_FILE)
        if self._tokenizer.get_vocab_size(with_added_tokens=True) > self._table.shape[0]:
            raise WeightsNotFoundError(f"{root}: the tokenizer has more tokens than the table has rows")
        self._do_lower_case = bool(manifest.get("do_lower_case", False))
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return int(self._table.shape[1])

    @property
    def fingerprint(self) -> str:
        """Hash of the table, weights and tokenizer files plus every setting (computed on first use)."""
        if self._fingerprint is None:
            files = {name: sha256_file(self.folder / name) for name in (TABLE_FILE, WEIGHTS_FILE, TOKENIZER_FILE)}
            settings = {
                "kind": "static-text",
                "format": FORMAT,
                "source_fingerprint": self.manifest.get("source", {}).get("fingerprint"),
                "do_lower_case": self._do_lower_case,
                **dict(self.manifest.get("settings", {})),
            }
            self._fingerprint = make_fingerprint(self.name, settings, files)
        return self._fingerprint

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text holds (no special tokens): all of them are read."""
        return [len(e.ids) for e in self._tokenizer.encode_batch(self._prepare(list(texts)), add_special_tokens=False)]

    def _prepare(self, texts: list[str]) -> list[str]:
        return [t.strip().lower() if self._do_lower_case else t.strip() for t in texts]

    def encode_text(self, texts: Sequence[str], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """(n, dim) L2-normalised float32: weighted mean of the token vectors of each whole text."""
        items = check_texts(texts)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        step = int(batch_size or self.default_batch_size)
        for start in range(0, len(items), step):
            out[start : start + step] = self._embed(self._prepare(items[start : start + step]), start)
        return out

    def _embed(self, texts: list[str], first: int) -> np.ndarray:
        encoded = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encoded), dtype=np.int64, count=len(encoded))
        empty = np.flatnonzero(lengths == 0)
        if empty.size:  # only characters the tokenizer drops (control characters): no vector to give
            raise InvalidInputError(
                f"text #{first + int(empty[0])} holds no tokens after tokenisation; nothing to embed"
            )
        ids = np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encoded])
        weights = self._weights[ids]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        sums = np.add.reduceat(self._table[ids] * weights[:, None], starts, axis=0)
        totals = np.add.reduceat(weights, starts)
        return l2_normalise(sums / np.maximum(totals, 1e-12)[:, None])

    def __repr__(self) -> str:
        return f"StaticTextEncoder(name={self.name!r}, dim={self.dim}, folder={str(self.folder)!r})"


def is_static_folder(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds a static encoder manifest (how ``create_encoder`` recognises a plain folder)."""
    return (Path(folder) / MANIFEST).is_file()


# ------------------------------------------------------------------------------------------- distillation


def train_reports(cases: Iterable[Case]) -> list[str]:
    """Report texts of the train split (the only ones distillation may see); refuses a corpus without any."""
    items = list(cases)
    texts = [c.report_text for c in items if c.split == DISTILL_SPLIT and c.report_text.strip()]
    if not texts:
        counts: dict[str, int] = {}
        for c in items:
            counts[c.split] = counts.get(c.split, 0) + 1
        raise InvalidInputError(
            f"distillation needs {DISTILL_SPLIT} reports and found none (cases per split: {counts or 'no cases'}); "
            "the frequency weights are counted on the train split only, never on val/test"
        )
    return texts


def token_weights(tokenizer: Any, texts: Sequence[str], vocab_size: int, sif_a: float, lower: bool) -> np.ndarray:
    """(vocab_size,) smooth-inverse-frequency weights a / (a + p(token)), p counted over ``texts``."""
    prepared = [t.strip().lower() if lower else t.strip() for t in texts]
    counts = np.zeros(vocab_size, dtype=np.float64)
    for encoding in tokenizer.encode_batch(prepared, add_special_tokens=False):
        np.add.at(counts, np.asarray(encoding.ids, dtype=np.int64), 1.0)
    total = counts.sum()
    if total == 0:
        raise InvalidInputError("the train reports hold no tokens; nothing to count frequencies on")
    p = counts / total
    return (sif_a / (sif_a + p)).astype(np.float32)


def source_token_vectors(
    source: SentenceTransformerEncoder,
    *,
    token_ids: Sequence[int] | None = None,
    batch_size: int = 1024,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Source embeddings (not normalised) of tokens alone, ``[CLS] token [SEP]`` mean-pooled as the source pools.

    ``token_ids`` defaults to the whole vocabulary (30,522 rows for MiniLM: about a minute on 2 cores). One pass
    can feed several distillations (``distill_static_encoder(..., token_vectors=...)``).
    """
    import torch

    _check_source(source)
    model = source.model
    tokenizer = model.tokenizer
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise InvalidInputError(f"the source tokenizer of {source.name} has no [CLS]/[SEP] tokens")
    all_ids = np.arange(len(tokenizer)) if token_ids is None else np.asarray(token_ids, dtype=np.int64)
    out = np.empty((len(all_ids), source.dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(all_ids), batch_size):
            ids = torch.as_tensor(all_ids[start : start + batch_size], dtype=torch.long)
            batch = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], dim=1)
            batch = batch.to(model.device)
            hidden = model.network(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            out[start : start + len(ids)] = hidden.mean(dim=1).float().cpu().numpy()  # no padding: = mean pool
            if progress is not None:
                progress("distil token vectors", min(start + batch_size, len(all_ids)), len(all_ids))
    return out


def _check_source(source: Any) -> None:
    from ctrag.encoders.text import SentenceTransformerEncoder, _MeanPoolModel

    if not isinstance(source, SentenceTransformerEncoder) or not isinstance(source.model, _MeanPoolModel):
        raise InvalidInputError(
            f"encoder {getattr(source, 'name', source)!r} is not a mean-pooling transformer; only such a "
            "sentence encoder (the packaged MiniLM) can be distilled token by token"
        )


def _pca(vectors: np.ndarray, dims: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Centred PCA of the token vectors (fit on the table itself), or the vectors unchanged for ``None``."""
    if dims is None:
        return vectors, {"applied": False}
    if dims > vectors.shape[1]:
        raise InvalidInputError(f"pca_dims {dims} exceeds the source dimension {vectors.shape[1]}")
    x = vectors.astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    projected = (x - mean) @ vt[:dims].T
    return projected.astype(np.float32), {
        "applied": True,
        "explained_variance": round(float(var[:dims].sum() / var.sum()), 6),
    }


def distill_static_encoder(
    cases: Iterable[Case],
    out_dir: str | os.PathLike[str],
    *,
    source: SentenceTransformerEncoder | None = None,
    config: StaticDistillConfig | None = None,
    token_vectors: np.ndarray | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Distil ``source`` (default: the packaged MiniLM) into a static encoder folder at ``out_dir``.

    Only the ``train`` cases of ``cases`` are read (their reports give the frequency weights); the folder is
    written beside ``out_dir`` and moved into place at the end, so a crash leaves no half-written encoder.
    ``token_vectors``: the output of :func:`source_token_vectors` for this ``source`` (whole vocabulary), to
    skip recomputing it; by default it is computed here.
    """
    from ctrag.encoders.text import SentenceTransformerEncoder

    config = config or StaticDistillConfig()
    texts = train_reports(cases)
    if source is None:
        source = SentenceTransformerEncoder()
    _check_source(source)
    tokenizer_path = source.model_path / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise WeightsNotFoundError(f"{source.model_path}: no fast-tokenizer file {TOKENIZER_FILE} to distil with")
    tokenizer = _load_tokenizer(tokenizer_path)
    lower = bool(source.model.do_lower_case)

    vocab = len(source.model.tokenizer)
    if token_vectors is None:
        raw = source_token_vectors(source, batch_size=config.batch_size, progress=progress)
    else:
        raw = np.asarray(token_vectors, dtype=np.float32)
        if raw.shape != (vocab, source.dim):
            raise InvalidInputError(f"token_vectors must have shape {(vocab, source.dim)}, got {raw.shape}")
    if config.normalise_tokens:
        raw = l2_normalise(raw)
    table, pca_info = _pca(raw, config.pca_dims)
    weights = token_weights(tokenizer, texts, raw.shape[0], config.sif_a, lower)
    manifest = {
        "format": FORMAT,
        "name": NAME,
        "dim": int(table.shape[1]),
        "vocab_size": int(table.shape[0]),
        "do_lower_case": lower,
        "settings": config.vector_settings(),
        "source": {
            "name": source.name,
            "fingerprint": source.fingerprint,
            "model_path": str(source.model_path),
            "tokenizer_sha256": sha256_file(tokenizer_path),
        },
        "weights_counted_on": {"split": DISTILL_SPLIT, "reports": len(texts)},
        "pca": pca_info,
        "pooling": "L2-normalised SIF-weighted mean of the token vectors of the whole text (no window)",
    }
    final = Path(out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        np.save(staging / TABLE_FILE, table, allow_pickle=False)
        np.save(staging / WEIGHTS_FILE, weights, allow_pickle=False)
        shutil.copyfile(tokenizer_path, staging / TOKENIZER_FILE)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.chmod(staging, 0o755)
        _replace_dir(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("static encoder written to %s (%d tokens x %d, weights from %d train reports)",
                final, table.shape[0], table.shape[1], len(texts))  # fmt: skip
    return final


def _replace_dir(staging: Path, final: Path) -> None:
    """Move ``staging`` to ``final``; an existing ``final`` is swapped out first and removed afterwards."""
    if final.exists() and not final.is_dir():
        raise InvalidInputError(f"{final} exists and is not a folder; refusing to replace it")
    if not final.exists():
        os.rename(staging, final)
        return
    if any(final.iterdir()) and not is_static_folder(final):
        raise InvalidInputError(f"{final} is a non-empty folder that is not a static encoder; refusing to replace it")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.rename(final, old)
    try:
        os.rename(staging, final)
    except OSError:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
