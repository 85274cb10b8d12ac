"""How the ``uncertain`` [RAG] placement relates to the ``abnormal`` one on the shipped CT-RATE train reports.

Usage: ``PYTHONPATH=src:tests python scripts/adarag_rag_placement.py [N_REPORTS] [WARMUP_STEPS] [QUANTILE]``.
Warms the tiny default decoder up on plain report text exactly as ``train_adarag`` does (``steps=0``), scores every
sentence by its mean token NLL given the preceding text, flags those above the quantile and prints how many of the
flagged sentences are abnormal (by ``sentence_is_abnormal``) against the base rate. It measures placement only,
not report quality.
"""

from __future__ import annotations

import json
import math
import sys
import time

from testsupport.index_data import read_ct_rate

from ctrag.reporting.sentences import tag_report
from ctrag.reporting.training.adarag import AdaRAGTrainConfig, sentence_nll, train_adarag, uncertain_flags


def main(n: int = 800, warmup: int = 100, quantile: float = 0.7) -> dict[str, float]:
    cases = read_ct_rate("train", n)
    started = time.time()
    cfg = AdaRAGTrainConfig(steps=0, warmup_steps=warmup, rag_placement="uncertain", rag_uncertainty_quantile=quantile)
    model, _, summary = train_adarag(cases, cfg)  # steps=0: the model returned is the warmed-up scorer
    scores = sentence_nll(model, cases, lambda c: "")
    flags, thr = uncertain_flags(scores, quantile)
    rows = [
        (s.abnormal, f, v)
        for c, rf, rv in zip(cases, flags, scores, strict=True)
        for s, f, v in zip(tag_report(c.report_findings, c.report_impression), rf, rv, strict=True)
        if math.isfinite(v)
    ]
    n_ab = sum(a for a, _, _ in rows)
    n_fl = sum(f for _, f, _ in rows)
    both = sum(a and f for a, f, _ in rows)
    out = {
        "reports": len(cases),
        "scored_sentences": len(rows),
        "abnormal_base_rate": round(n_ab / len(rows), 3),
        "flagged": n_fl,
        "abnormal_among_flagged": round(both / n_fl, 3),
        "abnormal_sentences_flagged": round(both / n_ab, 3),
        "mean_nll_abnormal": round(sum(v for a, _, v in rows if a) / n_ab, 3),
        "mean_nll_normal": round(sum(v for a, _, v in rows if not a) / (len(rows) - n_ab), 3),
        "threshold": round(thr, 3),
        "threshold_in_training": summary["rag_nll_threshold"],
        "warmup_loss_last": summary["warmup_loss_last"],
        "seconds": round(time.time() - started, 1),
    }
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(*(f(a) for f, a in zip((int, int, float), args, strict=False))), indent=1))
