"""The language model of the report methods: any Hugging Face causal LM from a local folder, fed visual prefixes.

Why a wrapper: AdaRAG-CT, DiffVP and Reg2RG all condition a causal LM on vectors (visual tokens, difference
tokens, region tokens) placed among the prompt's text, train it with the usual next-token loss on the report only,
and decode greedily or with beam search. :class:`ReportLM` does exactly that for any ``AutoModelForCausalLM``, so the
methods differ only in how they build their inputs:

* inputs are **pieces**: a sequence of ``str`` (tokenised, embedded by the LM's own input embeddings) and
  ``torch.Tensor`` of shape ``(n, hidden_size)`` (already projected to the LM width, e.g. by
  :class:`PrefixProjector`; placed as they are). Reg2RG's "special tokens replaced by embeddings" and DiffVP's
  "prefix tokens before the LM input" are both a list of pieces; no vocabulary change is needed for them;
* :meth:`ReportLM.loss` — mean next-token loss over the target text (prompt positions are not scored); a target
  that does not fit the context is cut with a warning;
* :meth:`ReportLM.generate` — greedy (``num_beams=1``) or beam search, deterministic; the text after the prompt;
* :meth:`ReportLM.save_pretrained` / :meth:`ReportLM.from_pretrained` — a folder (``lm.json`` with a fingerprint,
  ``model/`` safetensors, ``tokenizer/``), never a pickle; LoRA runs save only their adapter plus the base path.

Loading (:func:`load_causal_lm`): ``transformers`` with ``local_files_only=True`` (nothing is downloaded); a
missing folder, a folder without ``config.json`` or a non-causal architecture (e.g. a BERT encoder) is a
:class:`~ctrag.errors.WeightsNotFoundError` / :class:`~ctrag.errors.CheckpointMismatchError` naming the path.
LoRA (``peft``) is optional: asked for without ``peft`` installed it is a :class:`~ctrag.errors.MissingDependencyError`.

The CPU default (:func:`tiny_report_lm`): a 2-layer GPT-2 config from ``transformers`` with a byte-level BPE
tokenizer trained with ``tokenizers`` on the texts it is given — the shipped **train** reports only (the caller
passes them; ``ctrag train reporter`` does). It makes every code path run on a laptop; it is not a clinical
language model. At paper scale pass a LLaMA-class folder instead (bf16 ``dtype``, LoRA, gradient checkpointing).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ctrag.errors import (
    CheckpointMismatchError,
    ConfigError,
    InvalidInputError,
    MissingDependencyError,
    WeightsNotFoundError,
)
from ctrag.utils.hashing import sha256_file, sha256_json

logger = logging.getLogger(__name__)

LM_FORMAT = "ctrag-report-lm/1"
LM_META = "lm.json"
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"

Piece = str | torch.Tensor


@dataclass
class TinyDecoderConfig:
    """The CPU default decoder: GPT-2 shape and BPE vocabulary size (``reporting.lm:`` section of a preset)."""

    vocab_size: int = 2000
    min_frequency: int = 2
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(f"TinyDecoderConfig: n_embd {self.n_embd} must be divisible by n_head {self.n_head}")
        if self.vocab_size < 300 or self.n_positions < 16 or self.n_layer < 1:
            raise ConfigError("TinyDecoderConfig: vocab_size >= 300 (bytes + merges), n_positions >= 16, n_layer >= 1")


@dataclass
class LoRASettings:
    """LoRA on a frozen base (``peft``); ``target_modules`` None lets peft pick the architecture's defaults;
    ``trainable_token_indices``: vocabulary rows of the input embedding trained beside the adapters (tokens added for
    a method, e.g. ``[RAG]``, whose rows would otherwise stay at their initial values)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None
    trainable_token_indices: tuple[int, ...] = ()


class PrefixProjector(nn.Module):
    """Visual vectors -> LM-width tokens (Linear, GELU, Linear): the projection every method puts before the LM."""

    def __init__(self, in_dim: int, hidden_size: int, mid: int | None = None) -> None:
        super().__init__()
        mid = mid or hidden_size
        self.net = nn.Sequential(nn.Linear(in_dim, mid), nn.GELU(), nn.Linear(mid, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------------------------------------------
# Tokenizer and tiny default model
# --------------------------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2) -> Any:
    """Byte-level BPE (exact round trip of any text) trained on ``texts``; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [t for t in texts if isinstance(t, str) and t.strip()]
    if not corpus:
        raise InvalidInputError("train_tokenizer: no non-empty training texts")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS)


def tiny_report_lm(texts: Sequence[str], config: TinyDecoderConfig | None = None) -> ReportLM:
    """A fresh tiny GPT-2 + BPE tokenizer fitted to ``texts`` (pass training-split reports only)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = config or TinyDecoderConfig()
    tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg.min_frequency)
    gcfg = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    state = torch.random.get_rng_state()
    try:  # seeded initialisation without leaving the global RNG changed
        torch.manual_seed(cfg.seed)
        model = GPT2LMHeadModel(gcfg)
    finally:
        torch.random.set_rng_state(state)
    return ReportLM(
        model, tokenizer, source={"kind": "tiny-gpt2", "config": asdict(cfg), "tokenizer_texts": len(texts)}
    )


# --------------------------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------------------------


class ReportLM(nn.Module):
    """A causal LM + tokenizer that read interleaved text and embedding pieces (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, *, source: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.eos_token_id is None:
            raise CheckpointMismatchError("the tokenizer has no end-of-sequence token; report generation needs one")
        self.source = dict(source or {})

    # ---------------------------------------------------------------- facts
    # Under LoRA with trainable tokens the input embedding is peft's wrapper, whose ``.weight`` rebuilds the whole
    # vocabulary matrix on each read; width and device are read where that costs nothing (AdaRAG asks per token).
    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        for name in ("n_positions", "max_position_embeddings", "max_sequence_length", "seq_length"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """Content hash of the weights and the vocabulary (equal for equal models, across processes)."""
        from ctrag.encoders.clip import state_dict_sha256

        vocab = sorted(self.tokenizer.get_vocab().items())
        return sha256_json({"weights": state_dict_sha256(self.model.state_dict()), "vocab": vocab})[:16]

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Add tokens (e.g. AdaRAG-CT's ``[RAG]``) and grow the embedding matrix; returns their ids."""
        new = [t for t in tokens if t not in self.tokenizer.get_vocab()]
        if new:
            self.tokenizer.add_special_tokens({"additional_special_tokens": list(new)})
            self.model.resize_token_embeddings(len(self.tokenizer))
        return [int(self.tokenizer.convert_tokens_to_ids(t)) for t in tokens]

    # ---------------------------------------------------------------- inputs
    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed_pieces(self, pieces: Sequence[Piece], *, bos: bool = True) -> torch.Tensor:
        """``(L, hidden_size)`` embeddings of a prompt: text pieces through the LM's embeddings, tensors as given."""
        emb = self.model.get_input_embeddings()
        parts: list[torch.Tensor] = []
        ids: list[int] = [self.tokenizer.bos_token_id] if bos and self.tokenizer.bos_token_id is not None else []
        for piece in pieces:
            if isinstance(piece, str):
                ids += self.token_ids(piece)
                continue
            if not isinstance(piece, torch.Tensor) or piece.ndim != 2 or piece.shape[1] != self.hidden_size:
                shape = tuple(piece.shape) if isinstance(piece, torch.Tensor) else type(piece).__name__
                raise InvalidInputError(
                    f"an embedding piece must be a (n, {self.hidden_size}) tensor (the LM width), got {shape}"
                )
            if ids:
                parts.append(emb(torch.as_tensor(ids, device=self.device)))
                ids = []
            parts.append(piece.to(self.device, emb.weight.dtype))
        if ids:
            parts.append(emb(torch.as_tensor(ids, device=self.device)))
        if not parts:
            raise InvalidInputError("the prompt is empty")
        return torch.cat(parts, dim=0)

    # ---------------------------------------------------------------- training
    def loss(self, prompts: Sequence[Sequence[Piece]], targets: Sequence[str]) -> torch.Tensor:
        """Mean next-token cross-entropy of each ``target`` (+ EOS) after its prompt; prompts are not scored."""
        if len(prompts) != len(targets) or not prompts:
            raise InvalidInputError(f"loss: {len(prompts)} prompts for {len(targets)} targets")
        emb = self.model.get_input_embeddings()
        eos = int(self.tokenizer.eos_token_id)
        seqs, labels = [], []
        for pieces, target in zip(prompts, targets, strict=True):
            prefix = self.embed_pieces(pieces)
            room = self.context_length - prefix.shape[0]
            tgt = [*self.token_ids(target), eos]
            if room < 2:
                raise InvalidInputError(
                    f"the prompt takes {prefix.shape[0]} of the LM's {self.context_length} positions; no room for text"
                )
            if len(tgt) > room:
                logger.warning(
                    "target of %d tokens cut to %d to fit the LM context of %d", len(tgt), room, self.context_length
                )
                tgt = tgt[:room]
            t = torch.as_tensor(tgt, device=self.device)
            seqs.append(torch.cat((prefix, emb(t)), dim=0))
            labels.append(torch.cat((torch.full((prefix.shape[0],), -100, device=self.device), t)))
        length = max(s.shape[0] for s in seqs)
        x = torch.zeros(len(seqs), length, self.hidden_size, device=self.device, dtype=seqs[0].dtype)
        y = torch.full((len(seqs), length), -100, device=self.device, dtype=torch.long)
        att = torch.zeros(len(seqs), length, device=self.device, dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
            x[i, : s.shape[0]], y[i, : s.shape[0]], att[i, : s.shape[0]] = s, lab, 1
        logits = self.model(inputs_embeds=x, attention_mask=att).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), y[:, 1:].flatten(), ignore_index=-100)

    @torch.no_grad()
    def token_nll(self, pieces: Sequence[Piece], target_ids: Sequence[int]) -> torch.Tensor:
        """Teacher-forced negative log-likelihood of each target token after the prompt (no EOS, no gradient).

        Why ids, not text: a caller that scores spans of one target (AdaRAG-CT's per-sentence uncertainty) builds
        the ids span by span and averages each span; positions beyond the context are dropped (shorter result).
        """
        was = self.model.training
        self.model.eval()
        try:
            prefix = self.embed_pieces(pieces)
            room = self.context_length - prefix.shape[0]
            ids = torch.as_tensor(list(target_ids)[: max(room, 0)], dtype=torch.long, device=self.device)
            if ids.numel() == 0:
                return torch.zeros(0)
            emb = self.model.get_input_embeddings()
            x = torch.cat((prefix, emb(ids)), dim=0)[None]
            logits = self.model(inputs_embeds=x).logits[0, prefix.shape[0] - 1 : -1].float()
            return F.cross_entropy(logits, ids, reduction="none").cpu()
        finally:
            self.model.train(was)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        pieces: Sequence[Piece],
        *,
        max_new_tokens: int = 256,
        num_beams: int = 1,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> str:
        """Deterministic continuation of the prompt (greedy, or beam search with ``num_beams > 1``)."""
        if max_new_tokens < 1 or num_beams < 1:
            raise InvalidInputError("generate: max_new_tokens and num_beams must be >= 1")
        was_training = self.model.training
        self.model.eval()
        try:
            prefix = self.embed_pieces(pieces)[None]
            room = self.context_length - prefix.shape[1]
            if room < 1:
                raise InvalidInputError(
                    f"the prompt takes {prefix.shape[1]} positions; the LM context is {self.context_length}"
                )
            if max_new_tokens > room:
                logger.warning("max_new_tokens %d cut to %d (LM context %d)", max_new_tokens, room, self.context_length)
                max_new_tokens = room
            out = self.model.generate(
                inputs_embeds=prefix,
                attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=self.device),
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                repetition_penalty=repetition_penalty,
                no_repeat_ngram_size=no_repeat_ngram_size,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        finally:
            self.model.train(was_training)
        ids = [int(i) for i in out[0].tolist()]
        if self.tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(self.tokenizer.eos_token_id)]
        return str(self.tokenizer.decode(ids, skip_special_tokens=True)).strip()

    # ---------------------------------------------------------------- persistence
    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """``model/`` (safetensors; LoRA: adapter only), ``tokenizer/`` and ``lm.json`` (written last)."""
        from ctrag.utils.atomic import atomic_write_text

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        lora = _is_peft(self.model)
        self.model.save_pretrained(out / "model", safe_serialization=True)
        self.tokenizer.save_pretrained(out / "tokenizer")
        meta = {
            "format": LM_FORMAT,
            "fingerprint": self.fingerprint,
            "lora": lora,
            "base": self.source.get("path") if lora else None,
            "architecture": type(_base_model(self.model)).__name__,
            # A LoRA base stored in bf16 is reloaded in bf16: the fingerprint covers the base weights as trained.
            "dtype": str(self.model.get_input_embeddings().weight.dtype).removeprefix("torch."),
            "hidden_size": self.hidden_size,
            "context_length": self.context_length,
            "source": self.source,
            "files": {p.relative_to(out).as_posix(): sha256_file(p) for p in sorted((out / "model").glob("*"))},
        }
        atomic_write_text(out / LM_META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike[str], *, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> ReportLM:
        """A folder written by :meth:`save_pretrained`; weights are checked against the recorded fingerprint."""
        root = Path(folder)
        meta_path = root / LM_META
        if not meta_path.is_file():
            raise WeightsNotFoundError(f"{root} is not a ctrag report LM folder (no {LM_META}); see load_causal_lm")
        meta = json.loads(meta_path.read_text("utf-8"))
        if meta.get("format") != LM_FORMAT:
            raise CheckpointMismatchError(f"{meta_path}: format {meta.get('format')!r}, expected {LM_FORMAT!r}")
        for name, digest in meta.get("files", {}).items():
            if not (root / name).is_file() or sha256_file(root / name) != digest:
                raise CheckpointMismatchError(f"{root / name} is missing or changed since it was saved")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        if dtype is None and meta.get("lora") and meta.get("dtype") in ("bfloat16", "float16", "float32"):
            dtype = getattr(torch, meta["dtype"])
        if meta.get("lora"):
            base = meta.get("base")
            if not base:
                raise CheckpointMismatchError(f"{meta_path}: a LoRA folder must record its base model path")
            model = _load_model(Path(base), device, dtype, vocab=len(tokenizer))
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, root / "model", is_trainable=False)
        else:
            model = _load_model(root / "model", device, dtype, vocab=None)
        lm = cls(model, tokenizer, source=dict(meta.get("source") or {}))
        if lm.fingerprint != meta.get("fingerprint"):
            raise CheckpointMismatchError(
                f"{root}: loaded weights have fingerprint {lm.fingerprint}, lm.json records {meta.get('fingerprint')}"
            )
        return lm


def _is_peft(model: Any) -> bool:
    return type(model).__module__.startswith("peft")


def _base_model(model: Any) -> Any:
    return model.get_base_model() if _is_peft(model) else model


def _check_folder(path: Path) -> Any:
    if not path.exists():
        raise WeightsNotFoundError(f"language model folder {path} does not exist (ctrag never downloads models)")
    if not (path / "config.json").is_file():
        raise WeightsNotFoundError(f"{path} has no config.json; give a Hugging Face model folder (save_pretrained)")
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    # BERT-style encoders have a causal-LM head class too, but only models trained as decoders (is_decoder) fit.
    encoder_only = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or encoder_only:
        raise CheckpointMismatchError(
            f"{path}: model_type {config.model_type!r} is not a causal language model architecture "
            "(report generation needs a decoder such as GPT-2 or LLaMA)"
        )
    return config


def _load_model(path: Path, device: str, dtype: torch.dtype | None, vocab: int | None) -> Any:
    config = _check_folder(path)
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model: Any = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
    if vocab is not None and int(model.get_input_embeddings().weight.shape[0]) != vocab:
        model.resize_token_embeddings(vocab)
    return model.to(device)


def load_causal_lm(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    lora: LoRASettings | None = None,
    gradient_checkpointing: bool = False,
) -> ReportLM:
    """Any causal LM folder (a ctrag report-LM folder, or a Hugging Face ``save_pretrained`` folder + tokenizer).

    ``lora``: wrap the (frozen) base in LoRA adapters with ``peft``; only the adapters train.
    """
    root = Path(path)
    if (root / LM_META).is_file():
        lm = ReportLM.from_pretrained(root, device=device, dtype=dtype)
    else:
        model = _load_model(root, device, dtype, vocab=None)
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(f"{root}: no usable tokenizer files next to the model ({exc})") from None
        lm = ReportLM(model, tokenizer, source={"kind": "hf", "path": str(root.resolve())})
    if gradient_checkpointing:
        enable_checkpointing(lm.model)
    if lora is not None:
        lm = with_lora(lm, lora)
    return lm


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing that still trains LoRA adapters when every input embedding is frozen (a text-only
    prompt): the non-reentrant variant, which needs no input that requires grad."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def with_lora(lm: ReportLM, settings: LoRASettings) -> ReportLM:
    """The same LM with LoRA adapters on a frozen base (needs ``peft``)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise MissingDependencyError("LoRA needs the 'peft' package (pip install peft)") from None
    if "path" not in lm.source:
        raise ConfigError("LoRA is for a base model loaded from a folder (its path is saved with the adapter)")
    cfg = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules) if settings.target_modules else None,
        trainable_token_indices=list(settings.trainable_token_indices) or None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(lm.model, cfg)
    return ReportLM(model, lm.tokenizer, source={**lm.source, "lora": asdict(settings)})
