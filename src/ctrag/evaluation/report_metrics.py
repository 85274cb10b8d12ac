"""Report-generation metrics: BLEU-1..4, METEOR, ROUGE-1/2/L, CIDEr and clinical efficacy over 18 labels.

Language metrics come from the reference implementations: pycocoevalcap (BLEU with the "closest" reference
length, METEOR 1.5, ROUGE-L with β = 1.2, CIDEr-D) and Google's ``rouge-score`` for ROUGE-1/2 (pycocoevalcap
has only ROUGE-L). Texts are lower-cased and split into alphanumeric tokens by :func:`tokenize` first, the way
report-generation papers feed the COCO scorers (their PTB tokenizer drops punctuation likewise).

METEOR runs ``meteor-1.5.jar`` under Java; the jar bundles its WordNet synonym tables
(``synonym/english.synsets``), so no system WordNet is needed. Without Java, METEOR is reported as ``None``
with the reason in ``ReportScores.notes`` — never as 0.

Clinical efficacy (CE) compares the 18 CT-RATE labels a text classifier reads from the reference and from the
generated report: precision/recall/F1, micro (pooled over labels and reports, the usual CE figure) and macro
(mean over labels with any positive). The label extractor is any object with ``predict_proba(texts) -> (N, 18)``,
normally :mod:`ctrag.retrieval.label_model` trained on the shipped CT-RATE reports.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.errors import InvalidInputError
from ctrag.evaluation.report_bootstrap import (
    BLEU_ORDERS,
    CIDER_APPROXIMATION,
    METEOR_APPROXIMATION,
    METEOR_PER_REPORT,
    ReportStatistics,
    corpus_values,
)

logger = logging.getLogger(__name__)

LANGUAGE_METRIC_TITLES = {
    "bleu_1": "BLEU-1",
    "bleu_2": "BLEU-2",
    "bleu_3": "BLEU-3",
    "bleu_4": "BLEU-4",
    "meteor": "METEOR",
    "rouge_1": "ROUGE-1",
    "rouge_2": "ROUGE-2",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr",
}
"""Language metrics of :class:`ReportScores` in table order, with the names papers print."""

_TOKEN = re.compile(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*")


class LabelExtractor(Protocol):
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


def tokenize(text: str) -> str:
    """Lower-case alphanumeric tokens joined by single spaces (decimals and hyphenated words kept whole)."""
    return " ".join(_TOKEN.findall(str(text).lower()))


def adarag_text(text: str) -> str:
    """What AdaRAG-CT's ``adaragct/eval/text_metrics.py`` feeds pycocoevalcap's BLEU, ROUGE-L and CIDEr: the raw
    text stripped and lower-cased, nothing split off (a word keeps its comma or full stop). Line breaks stay:
    BLEU and CIDEr split on any whitespace, pycocoevalcap's ROUGE-L on single spaces only."""
    return str(text).strip().lower()


def adarag_meteor_text(text: str) -> str:
    """AdaRAG-CT's METEOR input: :func:`adarag_text` with the METEOR protocol's ``|||`` delimiter and line breaks
    replaced by spaces first."""
    return str(text).replace("|||", " ").replace("\n", " ").replace("\r", " ").strip().lower()


Normaliser = Callable[[str], str]
"""How a protocol turns a report into the whitespace-separated text pycocoevalcap scores."""


@dataclass
class ReportScores:
    bleu_1: float
    bleu_2: float
    bleu_3: float
    bleu_4: float
    meteor: float | None
    rouge_1: float
    rouge_2: float
    rouge_l: float
    cider: float
    n_reports: int
    clinical_efficacy: dict[str, float] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    protocol: str = "coco"
    per_report: dict[str, dict[str, float]] | None = None
    statistics: ReportStatistics | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The figures (JSON-ready); the per-report :attr:`statistics` stay out — they feed the bootstrap."""
        return {k: v for k, v in self.__dict__.items() if k != "statistics"}


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise InvalidInputError(f"{len(references)} references but {len(hypotheses)} generated reports")
    if not references:
        raise InvalidInputError("no reports to score")


def coco_scores(
    references: Sequence[str], hypotheses: Sequence[str], normalise: Normaliser = tokenize
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr from pycocoevalcap on ``normalise``-d text (corpus-level scores)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_pairs(references, hypotheses)
    gts = {i: [normalise(r)] for i, r in enumerate(references)}
    res = {i: [normalise(h)] for i, h in enumerate(hypotheses)}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print diagnostics
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        rouge_l, _ = Rouge().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    out = {f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["rouge_l"] = float(rouge_l)
    out["cider"] = float(cider)
    return out


def coco_statistics(
    references: Sequence[str], hypotheses: Sequence[str], normalise: Normaliser = tokenize
) -> ReportStatistics:
    """Per-report BLEU counts (pycocoevalcap's own n-gram cooking), ROUGE-1/2/L and CIDEr-D scores on the tokens
    :func:`coco_scores` scores, for the report bootstrap; their corpus values equal :func:`coco_scores`'."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_pairs(references, hypotheses)
    gts = {i: [normalise(r)] for i, r in enumerate(references)}
    res = {i: [normalise(h)] for i, h in enumerate(hypotheses)}
    cooker = BleuScorer(n=BLEU_ORDERS)
    for i in range(len(references)):
        cooker += (res[i][0], gts[i])
    comps = cooker.ctest
    with contextlib.redirect_stdout(io.StringIO()):
        _, rouge_l = Rouge().compute_score(gts, res)
        _, cider = Cider().compute_score(gts, res)
    rouge_n = _rouge_n_per_report(references, hypotheses, normalise)
    return ReportStatistics(
        bleu_kind="coco",
        bleu_matches=np.array([c["correct"] for c in comps], dtype=np.float64).reshape(-1, BLEU_ORDERS),
        bleu_totals=np.array([c["guess"] for c in comps], dtype=np.float64).reshape(-1, BLEU_ORDERS),
        hyp_len=np.array([c["testlen"] for c in comps], dtype=np.float64),
        ref_len=np.array([min(c["reflen"]) for c in comps], dtype=np.float64),  # one reference each
        means={**rouge_n, "rouge_l": np.asarray(rouge_l, dtype=np.float64), "cider": np.asarray(cider, np.float64)},
        approximate={"cider": CIDER_APPROXIMATION},
    )


def _rouge_n_per_report(
    references: Sequence[str], hypotheses: Sequence[str], normalise: Normaliser = tokenize
) -> dict[str, np.ndarray]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=False)
    r1, r2 = [], []
    for ref, hyp in zip(references, hypotheses, strict=True):
        s = scorer.score(normalise(ref), normalise(hyp))
        r1.append(s["rouge1"].fmeasure)
        r2.append(s["rouge2"].fmeasure)
    return {"rouge_1": np.asarray(r1, dtype=np.float64), "rouge_2": np.asarray(r2, dtype=np.float64)}


def rouge_n_scores(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-2 F-measures (``rouge-score``, no stemming) over report pairs."""
    _check_pairs(references, hypotheses)
    return {k: float(v.mean()) for k, v in _rouge_n_per_report(references, hypotheses).items()}


def meteor_available() -> tuple[bool, str]:
    """Whether METEOR can run here, and why not."""
    if shutil.which("java") is None:
        return False, "METEOR needs Java (the `java` executable is not on PATH)"
    try:
        import pycocoevalcap.meteor.meteor as m
    except ImportError as exc:
        return False, f"pycocoevalcap is not installed ({exc})"
    jar = Path(m.__file__).with_name(m.METEOR_JAR)
    if not jar.is_file():
        return False, f"METEOR jar missing at {jar}"
    return True, ""


def meteor_score(
    references: Sequence[str], hypotheses: Sequence[str], normalise: Normaliser = tokenize
) -> tuple[float, list[float]]:
    """Corpus METEOR 1.5 and per-pair scores (pycocoevalcap); the Java process is always stopped afterwards.

    Starting the jar loads its paraphrase and synonym tables (10-30 s on 2 cores): score everything in one call.
    """
    from pycocoevalcap.meteor.meteor import Meteor

    _check_pairs(references, hypotheses)
    gts = {i: [normalise(r)] for i, r in enumerate(references)}
    res = {i: [normalise(h)] for i, h in enumerate(hypotheses)}
    scorer = Meteor()
    try:
        score, per_pair = scorer.compute_score(gts, res)
    finally:
        proc = scorer.meteor_p
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.kill()
        proc.wait()  # Meteor.__del__ repeats these steps harmlessly on the reaped process
    return float(score), [float(v) for v in per_pair]


def clinical_efficacy(ref_labels: np.ndarray, hyp_labels: np.ndarray) -> dict[str, float]:
    """CE precision/recall/F1 (micro and macro) between 0/1 label matrices ``(N, L)``."""
    from sklearn.metrics import precision_recall_fscore_support

    rt, ht = np.asarray(ref_labels).astype(int), np.asarray(hyp_labels).astype(int)
    if rt.shape != ht.shape or rt.ndim != 2:
        raise InvalidInputError(f"clinical efficacy: label matrices differ in shape {rt.shape} vs {ht.shape}")
    out: dict[str, float] = {}
    p, r, f, _ = precision_recall_fscore_support(rt, ht, average="micro", zero_division=0)
    out.update({"precision_micro": float(p), "recall_micro": float(r), "f1_micro": float(f)})
    cols = [i for i in range(rt.shape[1]) if rt[:, i].any() or ht[:, i].any()]
    if cols:
        p, r, f, _ = precision_recall_fscore_support(rt[:, cols], ht[:, cols], average="macro", zero_division=0)
        out.update({"precision_macro": float(p), "recall_macro": float(r), "f1_macro": float(f)})
    else:
        out.update({"precision_macro": float("nan"), "recall_macro": float("nan"), "f1_macro": float("nan")})
    out["n_labels_macro"] = float(len(cols))
    return out


def label_thresholds(extractor: LabelExtractor, threshold: float | None) -> np.ndarray:
    """Per-label thresholds: the given one for all labels, else the extractor's own (tuned on its training
    folds, as :class:`ctrag.labels.LabelExtractor` stores them), else 0.5."""
    if threshold is not None:
        return np.full(len(CT_RATE_LABELS), float(threshold))
    own = getattr(extractor, "thresholds", None)
    if own is not None and np.shape(own) == (len(CT_RATE_LABELS),):
        return np.asarray(own, dtype=np.float64)
    return np.full(len(CT_RATE_LABELS), 0.5)


def describe_extractor(extractor: LabelExtractor | None) -> dict[str, Any] | None:
    """What read the labels, for the results table: class, fingerprint where it has one."""
    if extractor is None:
        return None
    fingerprint = getattr(extractor, "fingerprint", None)
    return {
        "name": type(extractor).__name__,
        "module": type(extractor).__module__,
        "fingerprint": fingerprint() if callable(fingerprint) else fingerprint,
    }


def labels_from_text(extractor: LabelExtractor, texts: Sequence[str], threshold: float | None = None) -> np.ndarray:
    """0/1 ``(N, 18)`` labels read from reports by ``extractor`` (thresholds: :func:`label_thresholds`)."""
    prob = np.asarray(extractor.predict_proba(list(texts)), dtype=np.float64)
    if prob.shape != (len(texts), len(CT_RATE_LABELS)):
        raise InvalidInputError(
            f"label extractor returned {prob.shape}, expected ({len(texts)}, {len(CT_RATE_LABELS)})"
        )
    return (prob >= label_thresholds(extractor, threshold)[None, :]).astype(int)


def evaluate_reports(
    references: Sequence[str],
    hypotheses: Sequence[str],
    *,
    label_extractor: LabelExtractor | None = None,
    threshold: float | None = None,
    meteor: bool = True,
    protocol: str = "coco",
    nltk_data: str | os.PathLike[str] | None = None,
    reference_labels: np.ndarray | None = None,
) -> ReportScores:
    """All report metrics for paired reference/generated reports, with the language metrics of ``protocol``:
    ``coco`` (this module's) or ``reg2rg`` (:func:`ctrag.evaluation.metric_protocols.reg2rg_scores`; its
    METEOR reads WordNet and Punkt from ``nltk_data``, else ``$NLTK_DATA`` / NLTK's default folders).

    The result carries per-report :attr:`ReportScores.statistics` for
    :func:`ctrag.evaluation.report_bootstrap.bootstrap_report_metrics`. ``reference_labels`` (the extractor's
    0/1 labels of ``references``) saves reading the references again when several methods share them."""
    from ctrag.evaluation.metric_protocols import PROTOCOLS, load_nltk_data, reg2rg_scores

    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"unknown metric protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    _check_pairs(references, hypotheses)
    notes: dict[str, str] = {}
    per_report = None
    met: float | None = None
    if protocol == "reg2rg":
        data = load_nltk_data(nltk_data) if meteor else None
        coco_like, per_report, notes, statistics = reg2rg_scores(references, hypotheses, nltk_data=data)
        coco = {k: float(v) for k, v in coco_like.items() if v is not None and k != "meteor"}
        rouge = {"rouge_1": coco["rouge_1"], "rouge_2": coco["rouge_2"]}
        met = coco_like.get("meteor")
    else:
        normalise = adarag_text if protocol == "adarag" else tokenize
        statistics = coco_statistics(references, hypotheses, normalise)
        # the corpus scores from the same per-report pass (equal to coco_scores', which a test checks)
        full = corpus_values(statistics, np.ones((1, statistics.n_reports)))
        coco = {k: float(full[k][0]) for k in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider")}
        if protocol == "adarag":
            notes["rouge_1_2"] = "not part of AdaRAG-CT's protocol: rouge-score on the same lower-cased raw text"
        rouge = {k: float(statistics.means[k].mean()) for k in ("rouge_1", "rouge_2")}
        if not meteor:
            notes["meteor"] = "not computed: disabled by the caller"
        else:
            ok, why = meteor_available()
            if ok:
                met, met_each = meteor_score(
                    references, hypotheses, adarag_meteor_text if protocol == "adarag" else tokenize
                )
                statistics.means[METEOR_PER_REPORT] = np.asarray(met_each, dtype=np.float64)
                statistics.approximate["meteor"] = METEOR_APPROXIMATION
            else:
                notes["meteor"] = f"not computed: {why}"
                logger.warning("METEOR not computed: %s", why)
    ce = None
    if label_extractor is not None:
        ref_labels = (
            labels_from_text(label_extractor, references, threshold) if reference_labels is None else reference_labels
        )
        hyp_labels = labels_from_text(label_extractor, hypotheses, threshold)
        ce = clinical_efficacy(ref_labels, hyp_labels)
        statistics.with_labels(ref_labels, hyp_labels)
    else:
        notes["clinical_efficacy"] = "not computed: no label extractor given"
    return ReportScores(
        bleu_1=coco["bleu_1"],
        bleu_2=coco["bleu_2"],
        bleu_3=coco["bleu_3"],
        bleu_4=coco["bleu_4"],
        meteor=met,
        rouge_1=rouge["rouge_1"],
        rouge_2=rouge["rouge_2"],
        rouge_l=coco["rouge_l"],
        cider=coco["cider"],
        n_reports=len(references),
        clinical_efficacy=ce,
        notes=notes,
        protocol=protocol,
        per_report=per_report,
        statistics=statistics,
    )


def read_labelled_reports(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """Texts and (n, 18) labels from a CT-CLIP text-classifier CSV (``report_text`` + the 18 label columns)."""
    import csv

    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"labelled report file not found: {file}")
    with open(file, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("report_text", *CT_RATE_LABELS) if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidInputError(f"{file}: missing column(s) {missing}")
        rows = list(reader)
    texts = [r["report_text"] for r in rows]
    labels = np.array([[int(float(r[c])) for c in CT_RATE_LABELS] for r in rows], dtype=np.int64)
    return texts, labels


def fit_label_extractor(train_csv: str | os.PathLike[str], seed: int = 0) -> Any:
    """The project's label extractor (:class:`ctrag.labels.LabelExtractor`, the strongest one it has: val
    macro-F1 0.95) fitted on a labelled CSV, e.g. the 800 shipped CT-RATE reports in
    ``sample_data/ct_rate_nc_sa/ct_clip_text_classifier/train.csv``.

    A ``train.csv`` in a CT-CLIP classifier folder is read with its patient ids (cross-validation folds, and
    patients shared with ``val.csv`` left out, as ``ctrag labels`` does); any other CSV with the 18 label
    columns is fitted with each report as its own group.
    """
    from ctrag.labels.ct_rate import fit_on_train
    from ctrag.labels.extractor import LabelExtractor

    path = Path(train_csv)
    if path.name == "train.csv" and (path.parent / "map_train_classifier.csv").is_file():
        return fit_on_train(path.parent, seed=seed)
    texts, labels = read_labelled_reports(path)
    return LabelExtractor.fit(texts, labels, seed=seed)


def label_extractor_quality(
    extractor: LabelExtractor, val_csv: str | os.PathLike[str], threshold: float | None = None
) -> dict[str, float]:
    """How well the label extractor reads labels from held-out reports: macro-F1 and macro-AUC (labels with both
    classes), micro-F1; the figure that bounds how much a clinical-efficacy score can mean."""
    from sklearn.metrics import f1_score, roc_auc_score

    texts, y = read_labelled_reports(val_csv)
    prob = np.asarray(extractor.predict_proba(texts), dtype=np.float64)
    pred = (prob >= label_thresholds(extractor, threshold)[None, :]).astype(int)
    cols = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    present = [j for j in range(y.shape[1]) if y[:, j].any() or pred[:, j].any()]
    return {
        "n_reports": float(len(texts)),
        "macro_f1": float(f1_score(y[:, present], pred[:, present], average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_auc": float(roc_auc_score(y[:, cols], prob[:, cols], average="macro")) if cols else float("nan"),
        "n_labels_auc": float(len(cols)),
    }
