"""Other papers' metric protocols, so that a published table row can be recomputed from released predictions.

Report-generation papers quote "BLEU", "METEOR" and "ROUGE" from different implementations, and the numbers are
not interchangeable: on Reg2RG's released lung-region predictions the COCO METEOR 1.5 reads 0.134 where their
NLTK METEOR reads 0.317. :func:`reg2rg_scores` recomputes their figures with the libraries their script calls.

Reg2RG (``evaluation/hf_nlg_evaluation.py`` in zhi-xuan-chen/Reg2RG) scores raw report text with Hugging Face
``evaluate``: ``bleu`` with ``max_order=n, smooth=True``, ``meteor`` and ``rouge`` with their defaults, and
pycocoevalcap CIDEr on untokenized text; it reports per-report mean ± sd and corpus ("Overall") values.
``evaluate`` fetches its metric scripts at run time, so this module reproduces what those scripts compute with
the libraries underneath:

* BLEU: each text split by the mteval-v13a tokenizer (case kept, punctuation split off), then the TensorFlow NMT
  ``compute_bleu`` that ``evaluate``'s ``bleu`` wraps: clipped n-gram counts pooled over the corpus, add-one
  smoothing of every order's precision (``smooth=True``), brevity penalty ``exp(1 - r/c)`` for ``c < r``.
* METEOR: ``nltk.translate.meteor_score.meteor_score`` (α 0.9, β 3, γ 0.5, lower-cased, Porter stems, WordNet
  synonyms) on ``nltk.word_tokenize`` tokens (Punkt sentences, then the Treebank-style word tokenizer). Corpus
  METEOR is the mean of per-report scores, as in ``evaluate``. WordNet and the Punkt model are NLTK data, not
  on PyPI, so they come from a local ``nltk_data`` folder (:func:`load_nltk_data`).
* ROUGE-1/2/L: Google ``rouge_score`` F-measures on the raw text (its own tokenizer, no stemming). ``evaluate``
  reports the median of a 1,000-fold bootstrap of the mean; the plain mean is given here (the two differ by
  resampling noise: 1e-4 to 2.4e-4 on Reg2RG's 1,514 lung reports).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrag.errors import InvalidInputError
from ctrag.evaluation.report_bootstrap import BLEU_ORDERS, CIDER_APPROXIMATION, ReportStatistics

PROTOCOLS = ("coco", "reg2rg", "adarag")
"""Protocols ``ctrag evaluate reports --protocol`` knows. ``adarag`` is AdaRAG-CT's ``adaragct/eval/text_metrics.py``
(renjie-liang/Adaptive-RAG-for-3DCT-Report-Generation): pycocoevalcap BLEU-1..4, ROUGE-L, METEOR 1.5 and CIDEr-D on
the raw text stripped and lower-cased, without the alphanumeric tokenization of ``coco``
(:func:`ctrag.evaluation.report_metrics.adarag_text`)."""

_13A_RULES = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)


def tokenize_13a(text: str) -> list[str]:
    """mteval-v13a tokens (the default tokenizer of sacrebleu and of ``evaluate``'s ``bleu``): case kept,
    punctuation split off except a period or comma between digits and a hyphen after a letter."""
    line = str(text).replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return line.split()


def _ngram_counts(tokens: Sequence[str], max_order: int) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for n in range(1, max_order + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def nmt_bleu_counts(
    reference: Sequence[str], hypothesis: Sequence[str], max_order: int = 4
) -> tuple[list[int], list[int]]:
    """Clipped n-gram matches and hypothesis n-gram totals of orders 1..``max_order`` for one pair: what
    :func:`nmt_bleu` pools over a corpus (and what the report bootstrap resamples)."""
    matches = [0] * max_order
    overlap = _ngram_counts(hypothesis, max_order) & _ngram_counts(reference, max_order)
    for gram, count in overlap.items():
        matches[len(gram) - 1] += count
    possible = [max(len(hypothesis) - n + 1, 0) for n in range(1, max_order + 1)]
    return matches, possible


def nmt_bleu(
    references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]], max_order: int = 4, smooth: bool = True
) -> float:
    """Corpus BLEU over token lists, one reference per hypothesis, the way TensorFlow NMT's ``compute_bleu``
    (and so ``evaluate``'s ``bleu``) defines it; ``smooth`` adds one to every order's matches and totals."""
    matches = [0] * max_order
    possible = [0] * max_order
    ref_len = hyp_len = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref_len += len(ref)
        hyp_len += len(hyp)
        pair_matches, pair_possible = nmt_bleu_counts(ref, hyp, max_order)
        matches = [a + b for a, b in zip(matches, pair_matches, strict=True)]
        possible = [a + b for a, b in zip(possible, pair_possible, strict=True)]
    return nmt_bleu_from_counts(matches, possible, ref_len, hyp_len, smooth)


def nmt_bleu_from_counts(
    matches: Sequence[int], possible: Sequence[int], ref_len: int, hyp_len: int, smooth: bool = True
) -> float:
    """BLEU of order ``len(matches)`` from pooled clipped matches, n-gram totals and lengths (NMT ``compute_bleu``)."""
    max_order = len(matches)
    if smooth:
        precisions = [(m + 1.0) / (p + 1.0) for m, p in zip(matches, possible, strict=True)]
    else:
        precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible, strict=True)]
    if min(precisions) <= 0:
        return 0.0
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order)
    ratio = hyp_len / ref_len if ref_len else 0.0
    penalty = 1.0 if ratio > 1.0 else (math.exp(1.0 - 1.0 / ratio) if ratio > 0 else 0.0)
    return geo_mean * penalty


@dataclass
class NltkData:
    """WordNet and the Punkt sentence model that NLTK's METEOR path needs, read from a local folder."""

    wordnet: Any
    word_tokenize: Callable[[str], list[str]]
    root: str


def nltk_data_dirs(explicit: str | os.PathLike[str] | None) -> list[str]:
    """Where NLTK data is looked for: the given folder only, else ``$NLTK_DATA`` then NLTK's default paths."""
    if explicit is not None:
        return [str(explicit)]
    import nltk.data

    env = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    return [*env, *[p for p in nltk.data.path if p not in env]]


def load_nltk_data(explicit: str | os.PathLike[str] | None = None) -> NltkData:
    """WordNet (``corpora/wordnet`` or ``corpora/wordnet.zip``) and Punkt (``tokenizers/punkt_tab/english``)
    from a local ``nltk_data`` folder; never downloads. Raises :class:`InvalidInputError` naming what is
    missing, where it looked, and how to fetch it on a machine with internet."""
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.tokenize.destructive import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer, load_punkt_params

    if explicit is not None and not Path(explicit).is_dir():
        raise InvalidInputError(f"--nltk-data {explicit}: not a folder")
    paths = nltk_data_dirs(explicit)
    if explicit is not None and str(explicit) not in nltk.data.path:
        # NLTK (>= 3.9) refuses to open corpus files outside nltk.data.path / $NLTK_DATA.
        nltk.data.path.append(str(explicit))
    missing: list[str] = []
    wn_root = None
    for name in ("corpora/wordnet.zip/wordnet/", "corpora/wordnet/"):
        try:
            wn_root = nltk.data.find(name, paths=paths)
            break
        except LookupError:
            continue
    if wn_root is None:
        missing.append("corpora/wordnet")
    try:
        punkt_dir = nltk.data.find("tokenizers/punkt_tab/english/", paths=paths)
    except LookupError:
        punkt_dir = None
        missing.append("tokenizers/punkt_tab/english")
    if missing:
        raise InvalidInputError(
            f"the reg2rg protocol's NLTK METEOR needs {', '.join(missing)} (NLTK data, not on PyPI) in an nltk_data "
            f"folder; looked in {paths}. Fetch it where there is internet with "
            "`python -m nltk.downloader -d DIR wordnet punkt_tab`, then pass --nltk-data DIR or set NLTK_DATA"
        )
    try:
        wordnet = WordNetCorpusReader(wn_root, None)
        sentences = PunktSentenceTokenizer(load_punkt_params(punkt_dir))
    except (OSError, ValueError, LookupError) as exc:
        raise InvalidInputError(f"NLTK data under {paths} could not be read: {exc}") from exc
    words = NLTKWordTokenizer()

    def word_tokenize(text: str) -> list[str]:
        # nltk.word_tokenize(text) without its global data lookup: Punkt sentences, then Treebank-style words.
        return [tok for sent in sentences.tokenize(str(text)) for tok in words.tokenize(sent)]

    return NltkData(wordnet=wordnet, word_tokenize=word_tokenize, root=str(wn_root))


def nltk_meteor(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]], wordnet: Any) -> list[float]:
    """Per-pair NLTK METEOR on token lists (NLTK defaults α 0.9, β 3, γ 0.5); ``wordnet`` is any object with
    ``synsets(word)``, normally the reader from :func:`load_nltk_data`."""
    from nltk.translate.meteor_score import meteor_score

    return [
        float(meteor_score([list(ref)], list(hyp), wordnet=wordnet))
        for ref, hyp in zip(references, hypotheses, strict=True)
    ]


def _mean_sd(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "sd": float(arr.std())}  # np.std (ddof 0), as Reg2RG's script reports


def reg2rg_scores(
    references: Sequence[str], hypotheses: Sequence[str], *, nltk_data: NltkData | None
) -> tuple[dict[str, float | None], dict[str, dict[str, float]], dict[str, str], ReportStatistics]:
    """Reg2RG's protocol on raw texts: corpus scores, per-report mean/sd, notes, and the per-report statistics
    the report bootstrap resamples.

    ``nltk_data`` None skips METEOR (reported as None with a note, never as 0).
    """
    import contextlib
    import io

    from pycocoevalcap.cider.cider import Cider
    from rouge_score import rouge_scorer

    if len(references) != len(hypotheses):
        raise InvalidInputError(f"{len(references)} references but {len(hypotheses)} generated reports")
    if not references:
        raise InvalidInputError("no reports to score")
    refs13 = [tokenize_13a(r) for r in references]
    hyps13 = [tokenize_13a(h) for h in hypotheses]
    counts = [nmt_bleu_counts(r, h, BLEU_ORDERS) for r, h in zip(refs13, hyps13, strict=True)]
    corpus: dict[str, float | None] = {}
    per_report: dict[str, dict[str, float]] = {}
    for n in range(1, 5):
        corpus[f"bleu_{n}"] = nmt_bleu(refs13, hyps13, max_order=n, smooth=True)  # pooled counts (orders <= n)
        per_report[f"bleu_{n}"] = _mean_sd(  # each report alone, from the counts already taken
            [
                nmt_bleu_from_counts(m[:n], p[:n], len(r), len(h), smooth=True)
                for (m, p), r, h in zip(counts, refs13, hyps13, strict=True)
            ]
        )
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    rouge: dict[str, list[float]] = {"rouge_1": [], "rouge_2": [], "rouge_l": []}
    for ref, hyp in zip(references, hypotheses, strict=True):
        s = scorer.score(str(ref), str(hyp))
        rouge["rouge_1"].append(s["rouge1"].fmeasure)
        rouge["rouge_2"].append(s["rouge2"].fmeasure)
        rouge["rouge_l"].append(s["rougeL"].fmeasure)
    for name, values in rouge.items():
        per_report[name] = _mean_sd(values)
        corpus[name] = per_report[name]["mean"]
    with contextlib.redirect_stdout(io.StringIO()):
        _, cider = Cider().compute_score(
            {i: [str(r)] for i, r in enumerate(references)}, {i: [str(h)] for i, h in enumerate(hypotheses)}
        )
    per_report["cider"] = _mean_sd([float(c) for c in cider])
    corpus["cider"] = per_report["cider"]["mean"]
    means = {name: np.asarray(values, dtype=np.float64) for name, values in rouge.items()}
    means["cider"] = np.asarray(cider, dtype=np.float64)
    notes: dict[str, str] = {}
    if nltk_data is None:
        corpus["meteor"] = None
        notes["meteor"] = "not computed: disabled by the caller"
    else:
        met = nltk_meteor(
            [nltk_data.word_tokenize(r) for r in references],
            [nltk_data.word_tokenize(h) for h in hypotheses],
            nltk_data.wordnet,
        )
        per_report["meteor"] = _mean_sd(met)
        corpus["meteor"] = per_report["meteor"]["mean"]
        means["meteor"] = np.asarray(met, dtype=np.float64)
    statistics = ReportStatistics(
        bleu_kind="nmt",
        bleu_matches=np.array([m for m, _ in counts], dtype=np.float64).reshape(-1, BLEU_ORDERS),
        bleu_totals=np.array([p for _, p in counts], dtype=np.float64).reshape(-1, BLEU_ORDERS),
        hyp_len=np.array([len(h) for h in hyps13], dtype=np.float64),
        ref_len=np.array([len(r) for r in refs13], dtype=np.float64),
        means=means,
        approximate={"cider": CIDER_APPROXIMATION},
    )
    return corpus, per_report, notes, statistics
