"""Write an ablation result as the paper's tables (Markdown), one machine-readable table (JSON + CSV), figures.

Markdown follows RAG-Text2CT's layout: Table 1 (FID 2.5D axial/coronal/sagittal/avg., FID 3D), Table 2 (AUC and
precision, macro and weighted), Table 3 (Dice, HD95, with the "Real" reference row). Each cell is the mean over
seeds, ``*`` when the method is significantly worse than the reference method, and the bootstrap CI in brackets.
A metric that could not be computed shows "n/a" and the Notes say why; a metric that does not apply (spatial
scores of text-only generation) shows "—".
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ctrag.data.labels import COARSE_LABELS
from ctrag.evaluation.ablation import AblationResult
from ctrag.evaluation.external import EXTERNAL_LEGEND
from ctrag.evaluation.generation_config import METRICS
from ctrag.utils.atomic import atomic_write_text
from ctrag.utils.jsonable import jsonable

TABLES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "Table 1: image fidelity",
        "Method",
        ("fid_axial", "fid_coronal", "fid_sagittal", "fid_avg", "fid_3d"),
        ("FID 2.5D axial ↓", "FID 2.5D coronal ↓", "FID 2.5D sagittal ↓", "FID 2.5D avg. ↓", "FID 3D ↓"),
    ),
    (
        "Table 2: clinical consistency",
        "Model",
        ("auc_macro", "auc_weighted", "precision_macro", "precision_weighted"),
        ("AUC macro ↑", "AUC weighted ↑", "Precision macro ↑", "Precision weighted ↑"),
    ),
    ("Table 3: spatial controllability", "Model", ("dice", "hd95"), ("Dice ↑", "HD95 (mm) ↓")),
    (
        "Table 3b: Dice per structure (cases whose proxy has it)",
        "Model",
        tuple(f"dice_{n}" for n in COARSE_LABELS.values()),
        tuple(f"{n} ↑" for n in COARSE_LABELS.values()),
    ),
)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def _cell(entry: dict[str, Any] | None, not_applicable: bool) -> str:
    if not_applicable:
        return "—"
    if entry is None:
        return "n/a"
    text = _fmt(entry["mean"]) + ("*" if entry.get("significant") else "")
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        text += f" [{_fmt(lo)}, {_fmt(hi)}]"
    return text


#: Fingerprint prefix of the random-weight FID extractors (:mod:`ctrag.evaluation.features`).
RANDOM_FALLBACK_PREFIX = "random-fallback"


def feature_header(fid: dict[str, Any] | None) -> str:
    """What Table 1's FID numbers were computed with, for its header (a random fallback is said outright).

    Why in the header: FID depends entirely on the feature network; numbers from random-weight features are not
    comparable with published FID, and a reader of the table alone must see that.
    """
    if not fid:
        return "features: not computed"
    e2, e3 = fid.get("extractor_2d"), fid.get("extractor_3d")
    text = f"features: 2-D {e2 or 'none'}, 3-D {e3 or 'none'}"
    if any(str(e).startswith(RANDOM_FALLBACK_PREFIX) for e in (e2, e3) if e):
        text += " — random-feature fallback, not comparable with published FID"
    return text


def render_markdown(
    result: AblationResult, *, command: str = "", figures: Sequence[Path] = (), root: Path | None = None
) -> str:
    cfg = result.config
    ref_label = result.methods.get(cfg.get("reference_method", ""), {}).get("label", cfg.get("reference_method", ""))
    lines = ["# Generation ablation (layout of RAG-Text2CT Tables 1-3)", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    cases = result.provenance.get("cases", [])
    report_cases = result.provenance.get("report_cases", [])
    reports_only = (
        f"held-out reports without a CT: {len(report_cases)} ({', '.join(report_cases[:8])}"
        f"{' ...' if len(report_cases) > 8 else ''}); "
        if report_cases
        else ""
    )
    lines += [
        f"Held-out cases with a CT: {len(cases)} ({', '.join(cases[:8])}{' ...' if len(cases) > 8 else ''}); "
        f"{reports_only}seeds: {list(cfg.get('seeds', []))}; reference method: {ref_label}.",
        "",
        f"Cells: mean over seeds; `*` = significantly worse than {ref_label} (one-sided paired Wilcoxon signed-rank "
        f"test over seeds, p < {cfg.get('alpha', 0.05)}); [low, high] = bootstrap "
        f"{int(100 * cfg.get('confidence', 0.95))} % CI of the mean over seeds; "
        "n/a = not computable here (see Notes); — = not applicable.",
        "",
    ]
    for title, first, keys, headers in TABLES:
        heading = title
        if title.startswith("Table 1"):
            heading = f"{title} ({feature_header(result.provenance.get('fid'))})"
        elif title.startswith("Table 3") and result.provenance.get("segmenter"):
            heading = f"{title} (segmenter: {result.provenance['segmenter']})"
        lines += [f"## {heading}", "", "| " + " | ".join([first, *headers]) + " |", "|" + "---|" * (len(keys) + 1)]
        real_metrics = result.real.get("metrics", {})
        show_real = title.startswith(("Table 2", "Table 3"))
        if show_real:
            lines.append("| Real | " + " | ".join(_cell(real_metrics.get(k), False) for k in keys) + " |")
        for entry in result.methods.values():
            na = set(entry.get("not_applicable", []))
            cells = [_cell(entry["metrics"].get(k), k in na) for k in keys]
            lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
        lines.append("")
        if any("external" in e for e in result.methods.values()):
            lines += [EXTERNAL_LEGEND, ""]
    lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    if figures:
        lines += ["## Figures", ""]
        for fig in figures:
            rel = os.path.relpath(fig, root) if root is not None else str(fig)
            lines.append(f"![{fig.stem}]({rel})")
        lines.append("")
    return "\n".join(lines)


def render_csv(result: AblationResult) -> str:
    """One row per method (and Real): mean, CI, p-value and significance of every metric."""
    cols = ["method", "label", "source"]
    for m in METRICS:
        cols += [m.key, f"{m.key}_ci_low", f"{m.key}_ci_high", f"{m.key}_p", f"{m.key}_significant"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    rows = [("real", result.real), *result.methods.items()]
    for key, entry in rows:
        source = "real" if key == "real" else ("external" if "external" in entry else "ctrag")
        row: dict[str, Any] = {"method": key, "label": entry["label"], "source": source}
        na = set(entry.get("not_applicable", []))
        for m in METRICS:
            e = entry.get("metrics", {}).get(m.key)
            if e is None or m.key in na:
                continue
            row[m.key] = _fmt(e["mean"], 6)
            row[f"{m.key}_ci_low"] = _fmt(e.get("ci_low"), 6)
            row[f"{m.key}_ci_high"] = _fmt(e.get("ci_high"), 6)
            if "p_value" in e:
                row[f"{m.key}_p"] = _fmt(e["p_value"], 6)
                row[f"{m.key}_significant"] = int(bool(e["significant"]))
        writer.writerow(row)
    return buf.getvalue()


def _rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (_fmt(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def write_figures(result: AblationResult, out_dir: Path) -> list[Path]:
    """Per-method CT grids (first seed, first cases, proxy overlaid), one comparison grid, metric bars."""
    from ctrag.evaluation.figures import GridRow, bar_series_from_summary, save_ct_grid, save_metric_bars

    fig_dir = out_dir / "figures"
    written: list[Path] = []
    seed = result.config.get("seeds", [0])[0]
    for key, rows in result.figure_rows.items():
        if not rows:
            continue
        label = result.methods[key]["label"]
        grid = [GridRow(f"{cid}", s.ct, s.proxy) for cid, s in rows]
        written.append(save_ct_grid(fig_dir / f"grid_{key}.png", grid, title=f"{label}, seed {seed}"))
    first_case = next((rows[0][0] for rows in result.figure_rows.values() if rows), None)
    if first_case is not None:
        compare = []
        if first_case in result.real_rows:
            title, ct, mask = result.real_rows[first_case]
            compare.append(GridRow(title, ct, mask))
        for key, rows in result.figure_rows.items():
            for cid, s in rows:
                if cid == first_case:
                    compare.append(GridRow(result.methods[key]["label"], s.ct, s.proxy))
        written.append(
            save_ct_grid(
                fig_dir / f"compare_{first_case}.png", compare, title=f"{first_case}: same report, seed {seed}"
            )
        )
    series = bar_series_from_summary(
        {"real": result.real, **result.methods} if result.real.get("metrics") else result.methods,
        [(m.key, m.name, m.better) for m in METRICS if m.group != "spatial_labels"],
    )
    if series:
        written.append(save_metric_bars(fig_dir / "metrics.png", series, title="mean over seeds, bootstrap CI"))
    return written


def write_ablation_outputs(
    result: AblationResult, out_dir: str | os.PathLike[str], *, command: str = "", figures: bool = True
) -> dict[str, Path]:
    """Write ``results.{md,json,csv}``, ``per_seed.csv``, ``per_case.csv`` and figures atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = write_figures(result, out) if figures else []
    paths = {
        "markdown": out / "results.md",
        "json": out / "results.json",
        "csv": out / "results.csv",
        "per_seed": out / "per_seed.csv",
        "per_case": out / "per_case.csv",
    }
    payload = {
        "command": command,
        "config": result.config,
        "methods": result.methods,
        "real": result.real,
        "notes": result.notes,
        "provenance": result.provenance,
        "per_seed": result.per_seed,
        "figures": [str(p.relative_to(out)) for p in figs],
    }
    atomic_write_text(paths["json"], json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["csv"], render_csv(result))
    atomic_write_text(paths["per_seed"], _rows_csv(result.per_seed))
    atomic_write_text(paths["per_case"], _rows_csv(result.per_case))
    atomic_write_text(paths["markdown"], render_markdown(result, command=command, figures=figs, root=out))
    for i, p in enumerate(figs):
        paths[f"figure_{i}"] = p
    return paths
