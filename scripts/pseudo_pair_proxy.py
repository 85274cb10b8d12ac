"""Text-to-text proxy for pseudo-pair quality on real CT-RATE reports (docs/results/pseudo_pairs.md).

No shipped CT has its own report, so pairing quality is measured where both sides have gold labels: each val
report's findings half (or impression half) stands in for an unpaired CT's text and is paired with train reports by
:func:`ctrag.data.pseudo_pairs.assign_pairs` in MiniLM space; the figure is the label Jaccard between the val
report's 18 gold labels and those of its paired train report, against the expected Jaccard of a random train report.
Val reports are queries here only to measure; the case-level API refuses them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ctrag.data.ct_rate import read_ctclip_classifier
from ctrag.data.pseudo_pairs import METHODS, assign_pairs, label_jaccard
from ctrag.encoders.factory import create_encoder


def proxy(folder: Path) -> dict:
    cases = read_ctclip_classifier(folder)
    train = [c for c in cases if c.split == "train" and c.has_report]
    val = [c for c in cases if c.split == "val" and c.report_findings and c.report_impression]
    enc = create_encoder("minilm")
    tv = np.asarray(enc.encode_text([c.report_text for c in train]))
    ty = np.array([c.labels for c in train])
    out: dict = {"n_train": len(train), "n_val": len(val), "encoder": enc.fingerprint, "rows": []}
    for half in ("findings", "impression"):
        q = np.asarray(enc.encode_text([getattr(c, f"report_{half}") for c in val]))
        vy = np.array([c.labels for c in val])
        sim = q @ tv.T
        rand = float(np.mean([label_jaccard(np.repeat(vy[i : i + 1], len(ty), 0), ty).mean() for i in range(len(val))]))
        for method in METHODS:
            for thr in (None, 0.6):
                pairs = assign_pairs(sim, [c.case_id for c in val], [c.case_id for c in train], method, thr)
                vi = {c.case_id: i for i, c in enumerate(val)}
                ti = {c.case_id: i for i, c in enumerate(train)}
                a = np.array([vy[vi[p.ct_case_id]] for p in pairs]).reshape(-1, 18)
                b = np.array([ty[ti[p.report_case_id]] for p in pairs]).reshape(-1, 18)
                j = label_jaccard(a, b) if len(pairs) else np.zeros(0)
                # the random baseline restricted to the same queries, so coverage does not bias the comparison
                rsub = (
                    float(
                        np.mean(
                            [label_jaccard(np.repeat(vy[vi[p.ct_case_id]][None], len(ty), 0), ty).mean() for p in pairs]
                        )
                    )
                    if pairs
                    else float("nan")
                )
                out["rows"].append(
                    {
                        "query": half,
                        "method": method,
                        "threshold": thr,
                        "pairs": len(pairs),
                        "jaccard": float(j.mean()) if len(j) else float("nan"),
                        "random_same_queries": rsub,
                        "random_all": rand,
                        "distinct_reports": len({p.report_case_id for p in pairs}),
                    }
                )
    return out


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "sample_data/ct_rate_nc_sa/ct_clip_text_classifier")
    res = proxy(folder)
    Path("docs/results/pseudo_pairs.json").write_text(json.dumps(res, indent=2) + "\n")
    for r in res["rows"]:
        print(r)
