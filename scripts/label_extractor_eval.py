"""Regenerate docs/results/label_extractor.{json,md}: the sentence-level label extractor fitted on the shipped
CT-RATE train reports, measured once on val.csv, next to the earlier TF-IDF LabelModel on the same split.

    PYTHONPATH=src python scripts/label_extractor_eval.py [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.labels.ct_rate import evaluate, fit_on_train, read_split
from ctrag.labels.extractor import expected_calibration_error
from ctrag.retrieval.label_model import LabelModel
from ctrag.utils.atomic import atomic_write_text

DATA = Path("sample_data/ct_rate_nc_sa/ct_clip_text_classifier")
MARKER = "<!-- hand-written notes below are kept when this file is regenerated -->"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    train, val = read_split(DATA, "train"), read_split(DATA, "val")
    model = fit_on_train(DATA, seed=args.seed)
    res = evaluate(model, val)
    old = LabelModel.fit(train.texts, train.labels, seed=args.seed)
    p_old = old.predict_proba(val.texts)
    pred_old = p_old >= 0.5
    y = val.labels.astype(bool)
    f1_old = [
        float(2 * (pred_old[:, j] & y[:, j]).sum() / max(1, pred_old[:, j].sum() + y[:, j].sum())) for j in range(18)
    ]
    record = {
        "val": res,
        "cv_train": model.info["cv"],
        "cv_train_uncalibrated": model.info["cv_uncalibrated"],
        "n_train": model.info["n_train"],
        "fingerprint": model.fingerprint(),
        "tfidf_label_model_val": {
            "macro_f1": float(np.mean(f1_old)),
            "f1": f1_old,
            "brier": float(np.mean((p_old - val.labels) ** 2)),
            "ece": expected_calibration_error(val.labels, p_old),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "label_extractor.json", json.dumps(record, indent=1) + "\n")
    cv = model.info["cv"]
    lines = [
        "# Label extractor: 18 CT-RATE labels from report text",
        "",
        "Command: `PYTHONPATH=src python scripts/label_extractor_eval.py --out docs/results`",
        "",
        f"Fitted on {model.info['n_train']} train.csv reports ({model.info['n_groups']} patients; train reports of "
        f"patients with val reports left out); measured once on the {res['n_reports']} val.csv reports. "
        "Thresholds per label chosen on patient-level 5-fold out-of-fold probabilities on train (grid 0.20-0.80).",
        "",
        f"**val: macro-F1 {res['macro_f1']:.3f}** (min {res['min_f1']:.3f}), micro-F1 {res['micro_f1']:.3f}, "
        f"macro-AUC {res['macro_auc']:.3f}, Brier {res['brier']:.4f}, ECE {res['ece']:.4f}. "
        f"Earlier TF-IDF LabelModel on the same split: macro-F1 {record['tfidf_label_model_val']['macro_f1']:.3f}, "
        f"Brier {record['tfidf_label_model_val']['brier']:.4f}, ECE {record['tfidf_label_model_val']['ece']:.4f}.",
        "",
        f"train CV (out-of-fold, calibrated; thresholds tuned on the same folds, so slightly optimistic): macro-F1 "
        f"{cv['macro_f1']:.3f}, Brier {cv['brier']:.4f}, ECE {cv['ece']:.4f}; uncalibrated at 0.5: macro-F1 "
        f"{model.info['cv_uncalibrated']['macro_f1']:.3f}, ECE {model.info['cv_uncalibrated']['ece']:.4f}.",
        "",
        "| label | val positives | TP | FP | FN | precision | recall | F1 | AUC | threshold | TF-IDF F1 "
        "| train-CV F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for j, name in enumerate(CT_RATE_LABELS):
        r = res["per_label"][name]

        def f(v: float | None) -> str:
            return "–" if v is None else f"{v:.3f}"

        lines.append(
            f"| {name} | {r['positives']} | {r['tp']} | {r['fp']} | {r['fn']} | {f(r['precision'])} | "
            f"{f(r['recall'])} | {r['f1']:.3f} | {f(r['auc'])} | {r['threshold']:.2f} | {f1_old[j]:.3f} | "
            f"{cv['f1'][j]:.3f} |"
        )
    lines += ["", f"Model fingerprint `{model.fingerprint()[:16]}`.", ""]
    md = args.out / "label_extractor.md"
    kept = ""
    if md.is_file() and MARKER in md.read_text(encoding="utf-8"):
        kept = md.read_text(encoding="utf-8").split(MARKER, 1)[1]
    atomic_write_text(md, "\n".join(lines) + "\n" + MARKER + kept)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
