"""The generation ablation of RAG-Text2CT (Tables 1-3): methods × seeds × held-out reports → one table.

Methods (``METHODS`` in :mod:`ctrag.evaluation.generation_config`, beside the settings): text-only (``none``: no
proxy), RAG-Nearest / RAG-Random / RAG-Farthest (the proxy is the mask of the training case that retrieval picks),
and the ground-truth mask of the evaluated case (upper bound, MAISI's role in the paper). Every method shares one
generator and differs only in the spatial control. Other methods' outputs join as extra rows, loaded and accounted
for by :mod:`ctrag.evaluation.external`.

For every seed and method the runner generates a volume per held-out report (resumable, see
:mod:`ctrag.evaluation.generation_cache`) and computes

- image fidelity: FID 2.5D per plane and averaged, FID 3D, generated vs the real held-out CTs
  (:mod:`ctrag.evaluation.fid`);
- clinical consistency: macro/weighted AUC and precision of the frozen classifier on generated volumes
  against the cases' labels, and on the real volumes as the reference row (only where cases carry labels);
- spatial controllability: Dice/HD95 between a segmentation of the generated volume and its proxy, for methods
  with a proxy (text-only is not scored, as in the paper), with "Real" (segmentation of real CTs vs their own
  independent masks) as the reference row.

Per-seed values feed a one-sided paired Wilcoxon test against the reference method (RAG-Nearest) and a
bootstrap CI (:mod:`ctrag.evaluation.stats`). Leakage is refused before anything runs: the retrieval index must
not contain any evaluated case, patient or split (``ctrag.retrieval.guard``), and every retrieved proxy is
checked again as it comes back.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ctrag.config import config_to_dict
from ctrag.data.case import Case
from ctrag.data.labels import COARSE_LABELS
from ctrag.data.nifti import Volume, load_volume
from ctrag.errors import ConfigError, InvalidInputError, LeakageError
from ctrag.evaluation.external import (
    EXTERNAL_LEGEND,
    EXTERNAL_MARK,
    GT,
    ExternalMethod,
    check_external_scored,
    external_notes,
    load_external_sample,
    load_external_table,
    new_external_report,
)
from ctrag.evaluation.fid import FIDEvaluator
from ctrag.evaluation.generation_cache import GeneratedSample, GenerationCache, sample_key
from ctrag.evaluation.generation_config import CLINICAL_KEYS, METHODS, METRICS, GenerationEvalConfig, MethodSpec
from ctrag.evaluation.metrics.classification import classification_scores
from ctrag.evaluation.metrics.segmentation import spatial_agreement
from ctrag.evaluation.stats import bootstrap_ci, wilcoxon_worse
from ctrag.utils.hashing import sha256_text
from ctrag.utils.progress import ProgressFn

logger = logging.getLogger(__name__)


class GenerateFn(Protocol):
    """What the runner calls: ``GenerationPipeline.__call__`` or any function with its keywords and result."""

    def __call__(
        self,
        report: str,
        *,
        strategy: str,
        mask: Volume | None,
        mask_labels: str,
        seed: int,
        steps: int | None,
        cfg: float | None,
        control_scale: float | None,
    ) -> Any: ...


Segmenter = Callable[[Volume], Volume]


@dataclass
class AblationResult:
    """Everything the tables and figures are written from."""

    config: dict[str, Any]
    methods: dict[str, dict[str, Any]]
    real: dict[str, Any]
    per_seed: list[dict[str, Any]]
    per_case: list[dict[str, Any]]
    notes: list[str]
    provenance: dict[str, Any]
    figure_rows: dict[str, list[tuple[str, GeneratedSample]]] = field(default_factory=dict)
    real_rows: dict[str, tuple[str, Volume, Volume | None]] = field(default_factory=dict)
    """Evaluated case id -> (title, real CT, its coarse reference mask or None), for comparison figures."""


# ------------------------------------------------------------------------------------------------ helpers


def _cases_by_id(cases: Sequence[Case], ids: Sequence[str], split: str, field_name: str) -> list[Case]:
    """The cases named by ``evaluation.<field_name>``, all of which must exist and belong to ``split``."""
    by_id = {c.case_id: c for c in cases}
    missing = [cid for cid in ids if cid not in by_id]
    if missing:
        raise InvalidInputError(f"evaluation.{field_name} not in the corpus: {missing}")
    chosen = [by_id[cid] for cid in ids]
    wrong = [c.case_id for c in chosen if c.split != split]
    if wrong:
        raise LeakageError(f"cases {wrong} are not in the evaluated split {split!r}")
    return chosen


def select_cases(cases: Sequence[Case], config: GenerationEvalConfig) -> list[Case]:
    """Held-out cases to evaluate: the configured split (or ids), each with a report and a real CT."""
    if config.case_ids:
        chosen = _cases_by_id(cases, config.case_ids, config.split, "case_ids")
    else:
        chosen = [c for c in cases if c.split == config.split]
    usable = [c for c in chosen if c.has_report and c.has_volume]
    skipped = sorted(c.case_id for c in chosen if c not in usable)
    if skipped:
        logger.info("skipping %d case(s) without report or CT: %s", len(skipped), skipped[:5])
    if config.max_cases is not None:
        usable = usable[: config.max_cases]
    if not usable:
        raise InvalidInputError(
            f"no case of split {config.split!r} has both a report and a CT volume to evaluate against"
        )
    return usable


def select_report_cases(cases: Sequence[Case], config: GenerationEvalConfig) -> list[Case]:
    """Held-out report-only cases (a report, no CT) of ``config.report_split``; empty when none is configured."""
    if config.report_split is None:
        return []
    if config.report_case_ids:
        chosen = _cases_by_id(cases, config.report_case_ids, config.report_split, "report_case_ids")
        unusable = [c.case_id for c in chosen if not c.has_report or c.has_volume]
        if unusable:
            raise InvalidInputError(
                f"evaluation.report_case_ids {unusable} are not report-only cases (a report and no CT); "
                "cases with a CT belong to the evaluated split"
            )
    else:
        chosen = [c for c in cases if c.split == config.report_split and c.has_report and not c.has_volume]
    if config.max_report_cases is not None:
        chosen = chosen[: config.max_report_cases]
    if not chosen:
        raise InvalidInputError(f"evaluation.report_split {config.report_split!r} has no report-only case")
    return chosen


def coarse_reference_mask(case: Case, ct: Volume, segmenter: Segmenter) -> tuple[Volume, str]:
    """A case's mask in coarse labels on its CT grid, and where it came from.

    TotalSegmentator masks get their body label from the classical body mask of the CT (``ctrag.segment``);
    cases without a mask get one from ``segmenter`` (marked ``segmenter-derived``: such a mask cannot serve as an
    independent "Real" reference).
    """
    if case.mask_path is None:
        return segmenter(ct), "segmenter-derived"
    from ctrag.data.labels import source_space
    from ctrag.data.nifti import check_same_grid

    mask = load_volume(case.mask_path)
    check_same_grid(mask, ct)
    space = source_space(case.mask_source, [int(v) for v in np.unique(np.asarray(mask.array))])
    if space == "totalseg":
        from ctrag.segment import totalseg_to_coarse

        return totalseg_to_coarse(mask, ct), f"{case.mask_source or 'totalsegmentator'} (coarse)"
    return mask.with_array(np.asarray(mask.array).astype(np.uint8)), case.mask_source or "coarse"


def _proxy_as_coarse(result: Any) -> np.ndarray | None:
    mask = getattr(result, "mask", None)
    if mask is None:
        return None
    label_set = getattr(result, "label_set", "coarse")
    if label_set == "coarse":
        return np.asarray(mask).astype(np.uint8)
    from ctrag.data.labels import as_coarse

    return as_coarse(np.asarray(mask), label_set)


def _nan_mean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# ---------------------------------------------------------------------------------------------- runner


class AblationRunner:
    """Runs one ablation; construct with the components, then call :meth:`run`."""

    def __init__(
        self,
        config: GenerationEvalConfig,
        generate: GenerateFn | None,
        *,
        segmenter: Segmenter,
        generator_id: str,
        cache_dir: str | Path,
        index: Any | None = None,
        classifier: Any | None = None,
        fid: FIDEvaluator | None = None,
        progress: ProgressFn | None = None,
        externals: Sequence[ExternalMethod] | None = None,
        segmenter_name: str = "",
    ) -> None:
        self.config = config
        if generate is None and config.methods:
            raise ConfigError(f"evaluation.methods {list(config.methods)} need a generator (evaluation.pipeline)")
        self.generate = generate
        self.segmenter = segmenter
        self.segmenter_name = segmenter_name
        self.generator_id = generator_id
        self.cache = GenerationCache(cache_dir)
        self.index = index
        self.classifier = classifier
        self.fid = fid
        self.progress = progress
        if externals is None:
            externals = [load_external_table(n, p) for n, p in config.external.items()]
        self.externals = {e.name: e for e in externals}
        if set(self.externals) != set(config.external):
            raise ConfigError(
                f"external tables {sorted(self.externals)} differ from evaluation.external {sorted(config.external)}"
            )
        self.methods = [METHODS[m] for m in config.methods] + [
            MethodSpec(e.name, f"{e.name} {EXTERNAL_MARK}", "external", external=True, conditioned=e.conditioned)
            for e in self.externals.values()
        ]
        self.external_report: dict[str, dict[str, Any]] = {}

    # 1. leakage -------------------------------------------------------------------------------------
    def check_leakage(self, cases: Sequence[Case]) -> None:
        """Refuse an index that holds any evaluated case, patient or split (before generating anything)."""
        if not any(m.retrieves for m in self.methods):
            return
        if self.index is None:
            raise InvalidInputError(
                "retrieval methods need the retrieval index to check it for leakage (evaluation.index / --index)"
            )
        from ctrag.retrieval.guard import assert_no_leakage

        splits = sorted({self.config.split, *([self.config.report_split] if self.config.report_split else [])})
        assert_no_leakage(self.index, cases, eval_split=splits)

    def _check_retrieved(self, sample: GeneratedSample, cases: Sequence[Case]) -> None:
        ids = {c.case_id for c in cases}
        patients = {c.patient_id for c in cases}
        for rec in sample.record.get("retrieved", []):
            cid = str(rec.get("case_id"))
            if cid in ids or str(rec.get("patient_id", "")) in patients:
                raise LeakageError(
                    f"a proxy was retrieved from evaluated case {cid}; the index must hold train cases only"
                )
            if self.index is not None and cid in self.index:
                case = self.index.case(self.index.row_of(cid))
                if case.split != "train" or case.patient_id in patients:
                    raise LeakageError(f"retrieved case {cid} (split {case.split}) is not a separate training case")

    # 2. generation ---------------------------------------------------------------------------------
    def _key(self, method: MethodSpec, seed: int, case: Case, gt_mask: Volume | None) -> str:
        cfg = self.config
        payload: dict[str, Any] = {
            "generator": self.generator_id,
            "method": method.key,
            "strategy": method.strategy,
            "seed": seed,
            "steps": cfg.steps,
            "cfg": cfg.cfg,
            "control_scale": cfg.control_scale,
            "report_sha256": sha256_text(case.report_text),
        }
        if gt_mask is not None:
            payload["mask_sha256"] = hashlib.sha256(np.ascontiguousarray(gt_mask.array).tobytes()).hexdigest()
            payload["mask_affine"] = np.round(gt_mask.affine, 4).tolist()
        return sample_key(payload)

    def _generate_one(self, method: MethodSpec, seed: int, case: Case, gt_mask: Volume | None) -> GeneratedSample:
        cfg = self.config

        def create() -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
            assert self.generate is not None
            result = self.generate(
                case.report_text,
                strategy=method.strategy,
                mask=gt_mask if method.uses_gt_mask else None,
                mask_labels="coarse",
                seed=seed,
                steps=cfg.steps,
                cfg=cfg.cfg,
                control_scale=cfg.control_scale,
            )
            retrieved = [dict(r) for r in getattr(result, "retrieved", []) or []]
            record = {
                "case_id": case.case_id,
                "method": method.key,
                "strategy": method.strategy,
                "seed": seed,
                "report_sha256": sha256_text(case.report_text),
                "retrieved": retrieved,
                "label_set": getattr(result, "label_set", "coarse"),
                "timings": dict(getattr(result, "timings", {}) or {}),
            }
            return np.asarray(result.volume), np.asarray(result.affine), _proxy_as_coarse(result), record

        key = self._key(method, seed, case, gt_mask if method.uses_gt_mask else None)
        return self.cache.get_or_create(method.key, seed, case.case_id, key, create)

    def run(
        self, cases: Sequence[Case], reference_cases: Sequence[Case] = (), report_cases: Sequence[Case] = ()
    ) -> AblationResult:
        """Generate and score ``cases`` (held-out, with CT) and ``report_cases`` (held-out reports without CT)."""
        cfg = self.config
        notes: list[str] = []
        no_ct = [c.case_id for c in cases if not c.volume_path]
        if no_ct:
            raise InvalidInputError(f"evaluated cases need a real CT (pass report-only cases separately): {no_ct}")
        report_cases = list(report_cases)
        evaluated = [*cases, *report_cases]
        self.check_leakage(evaluated)
        if report_cases:
            notes.append(
                f"{len(report_cases)} held-out report(s) without a CT (split {cfg.report_split}) are generated for "
                f"every method but the GT mask; their volumes join the generated side of FID and the spatial "
                f"scores. The GT-mask method rests on the {len(cases)} case(s) with a CT only, so its FID and "
                "Dice are not computed on the same reports as the other rows."
            )

        # Real references: CTs, coarse masks, FID features, classifier scores, segmentation vs own mask.
        real_ct = {c.case_id: load_volume(c.volume_path) for c in cases if c.volume_path}
        gt: dict[str, tuple[Volume, str]] = {}
        external_gt = any(r.mask == GT for e in self.externals.values() for r in e.rows.values())
        if any(m.uses_gt_mask for m in self.methods) or external_gt:
            for c in cases:
                gt[c.case_id] = coarse_reference_mask(c, real_ct[c.case_id], self.segmenter)
            derived = [cid for cid, (_, src) in gt.items() if src == "segmenter-derived"]
            if derived:
                notes.append(
                    f"GT mask: {len(derived)} of {len(cases)} evaluated case(s) have no mask; their "
                    f"'ground truth' is the segmenter's mask of the real CT ({', '.join(derived[:5])})."
                )
        real_feats = None
        if self.fid is not None:
            real_feats = self.fid.features([real_ct[c.case_id] for c in cases])
        labelled = [c for c in cases if c.labels is not None]
        clinical_ok = self.classifier is not None and len(labelled) > 0
        if self.classifier is None:
            notes.append("Clinical consistency: not computed (no classifier given: evaluation.classifier).")
        elif not labelled:
            notes.append(
                f"Clinical consistency: n/a: none of the {len(cases)} evaluated case(s) carries CT-RATE labels, "
                "so there is nothing to score the classifier against (no labels are invented)."
            )
        else:
            sources = sorted({c.extra.get("label_source") or c.report_source for c in labelled})
            notes.append(
                f"Clinical consistency rests on {len(labelled)} labelled case(s); label source: {', '.join(sources)}; "
                f"classifier {getattr(self.classifier, 'fingerprint', '')[:12]} "
                f"(trained on {getattr(self.classifier, 'metadata', {}).get('n_train', '?')} CTs)."
            )
        real_summary: dict[str, Any] = {"label": "Real", "metrics": {}}
        if clinical_ok and self.classifier is not None:
            y = np.stack([np.asarray(c.labels) for c in labelled])
            prob = self.classifier.predict_proba([real_ct[c.case_id] for c in labelled])
            sc = classification_scores(y, prob, threshold=cfg.label_threshold)
            for k in CLINICAL_KEYS:
                real_summary["metrics"][k] = {"mean": getattr(sc, k), "ci_low": float("nan"), "ci_high": float("nan")}
        ref_cases = list(reference_cases) or [c for c in cases if c.mask_path]
        real_dice, real_hd = [], []
        for c in ref_cases:
            if not c.mask_path or not c.volume_path:
                continue
            ct = real_ct.get(c.case_id) or load_volume(c.volume_path)
            mask, src = coarse_reference_mask(c, ct, self.segmenter)
            sa = spatial_agreement(self.segmenter(ct), mask)
            real_dice.append(sa.dice_mean)
            real_hd.append(sa.hd95_mean)
            real_summary.setdefault("spatial_cases", []).append(
                {"case_id": c.case_id, "mask": src, "dice": sa.dice, "hd95": sa.hd95, "missing": sa.missing}
            )
        if real_dice:
            for key, vals in (("dice", real_dice), ("hd95", real_hd)):
                lo, hi = bootstrap_ci(vals, confidence=cfg.confidence, n_resamples=cfg.n_bootstrap)
                real_summary["metrics"][key] = {"mean": _nan_mean(vals), "ci_low": lo, "ci_high": hi, "n": len(vals)}
            for name in COARSE_LABELS.values():
                for prefix in ("dice", "hd95"):
                    per = [c[prefix][name] for c in real_summary["spatial_cases"]]
                    if any(math.isfinite(v) for v in per):
                        nan = float("nan")
                        real_summary["metrics"][f"{prefix}_{name}"] = {
                            "mean": _nan_mean(per),
                            "ci_low": nan,
                            "ci_high": nan,
                        }
            notes.append(
                f"Real (spatial): segmenter vs the independent masks of {len(real_dice)} real CT(s): "
                f"{', '.join(c.case_id for c in ref_cases if c.mask_path)}."
            )
        else:
            notes.append("Real (spatial): n/a: no real CT with an independent mask among the reference cases.")
        real_rows: dict[str, tuple[str, Volume, Volume | None]] = {}
        for c in cases[: cfg.figure_cases]:
            mask_src = gt.get(c.case_id)
            title = f"Real {c.case_id}" + (f" ({mask_src[1]} mask)" if mask_src else "")
            real_rows[c.case_id] = (title, real_ct[c.case_id], mask_src[0] if mask_src else None)

        # Generation and per-case metrics.
        per_case: list[dict[str, Any]] = []
        per_seed: list[dict[str, Any]] = []
        figure_rows: dict[str, list[tuple[str, GeneratedSample]]] = {m.key: [] for m in self.methods}

        def cases_of(method: MethodSpec) -> list[Case]:
            return list(cases) if method.uses_gt_mask else evaluated

        total = sum(len(cases_of(m)) for m in self.methods) * len(cfg.seeds)
        done = 0
        for method in self.methods:
            method_cases = cases_of(method)
            if method.external:
                wanted = {(c.case_id, s) for c in method_cases for s in cfg.seeds}
                self.external_report[method.key] = new_external_report(self.externals[method.key], wanted)
            for seed in cfg.seeds:
                samples: list[GeneratedSample] = []
                scored_cases: list[Case] = []
                for case in method_cases:
                    if method.external:
                        loaded = load_external_sample(
                            self.externals[method.key], self.external_report[method.key], seed, case, gt
                        )
                        if loaded is None:
                            done += 1
                            if self.progress is not None:
                                self.progress("generate", done, total)
                            continue
                        sample = loaded
                    else:
                        gt_mask = gt[case.case_id][0] if method.uses_gt_mask else None
                        sample = self._generate_one(method, seed, case, gt_mask)
                        self._check_retrieved(sample, evaluated)
                    samples.append(sample)
                    scored_cases.append(case)
                    row: dict[str, Any] = {
                        "method": method.key,
                        "seed": seed,
                        "case_id": case.case_id,
                        "has_ct": case.volume_path is not None,
                        "retrieved": ";".join(sample.retrieved_ids),
                        "from_cache": sample.from_cache,
                    }
                    if method.external:
                        row["source"] = sample.record["path"]
                    if method.structural and sample.proxy is not None:
                        sa = spatial_agreement(self.segmenter(sample.ct), sample.proxy)
                        row.update({"dice": sa.dice_mean, "hd95": sa.hd95_mean, "missing": ";".join(sa.missing)})
                        row.update({f"dice_{n}": sa.dice[n] for n in COARSE_LABELS.values()})
                        row.update({f"hd95_{n}": sa.hd95[n] for n in COARSE_LABELS.values()})
                    per_case.append(row)
                    if seed == cfg.seeds[0] and len(figure_rows[method.key]) < cfg.figure_cases:
                        figure_rows[method.key].append((case.case_id, sample))
                    done += 1
                    if self.progress is not None:
                        self.progress("generate", done, total)
                per_seed.append(self._seed_metrics(method, seed, scored_cases, samples, per_case, real_feats, notes))
            if method.external:
                rep = self.external_report[method.key]
                pairs = len(method_cases) * len(cfg.seeds)
                check_external_scored(method.key, rep, pairs)
                notes.extend(external_notes(method.label, method.conditioned, rep, pairs))
        methods = self._summarise(per_seed)
        for m in self.methods:
            if not m.structural:
                methods[m.key]["not_applicable"] = [s.key for s in METRICS if s.group.startswith("spatial")]
            if m.external:
                methods[m.key]["external"] = self.external_report[m.key]
        if self.externals:
            notes.append(EXTERNAL_LEGEND)
        if self.segmenter_name:
            notes.append(f"Dice/HD95: generated and real CTs segmented by {self.segmenter_name}.")
        if "none" in cfg.methods:
            notes.append("Spatial controllability is not scored for text-only generation (no proxy), as in the paper.")
        if self.fid is not None:
            fp = self.fid.fingerprints
            notes.append(
                f"FID features: 2-D {fp['extractor_2d']}, 3-D {fp['extractor_3d']}; volumes prepared to "
                f"{fp['volume_shape']}, slices {fp['slice_size']} px, {self.fid.config.slices_per_volume} per plane "
                f"per volume, {self.fid.config.crops_per_volume} crop(s) per volume for 3-D."
            )
        return AblationResult(
            config=config_to_dict(cfg),
            methods=methods,
            real=real_summary,
            per_seed=per_seed,
            per_case=per_case,
            notes=_unique(notes),
            provenance={
                "generator": self.generator_id,
                "segmenter": self.segmenter_name or None,
                "external": {k: str(e.csv) for k, e in self.externals.items()},
                "cases": [c.case_id for c in cases],
                "report_cases": [c.case_id for c in report_cases],
                "fid": self.fid.fingerprints if self.fid is not None else None,
                "classifier": getattr(self.classifier, "fingerprint", None),
            },
            figure_rows=figure_rows,
            real_rows=real_rows,
        )

    def _seed_metrics(
        self,
        method: MethodSpec,
        seed: int,
        cases: Sequence[Case],
        samples: Sequence[GeneratedSample],
        per_case: Sequence[dict[str, Any]],
        real_feats: dict[str, np.ndarray] | None,
        notes: list[str],
    ) -> dict[str, Any]:
        cfg = self.config
        row: dict[str, Any] = {"method": method.key, "seed": seed, "n_scored": len(samples)}
        if not samples:
            notes.append(f"{method.label}: seed {seed} has no scored volume; its metrics are missing for that seed.")
            return row
        if self.fid is not None and real_feats is not None:
            fake = self.fid.features([s.ct for s in samples])
            try:
                res = self.fid.compare(real_feats, fake)
                row.update(
                    {
                        "fid_axial": res.axial,
                        "fid_coronal": res.coronal,
                        "fid_sagittal": res.sagittal,
                        "fid_avg": res.average,
                        "fid_3d": res.fid_3d if res.fid_3d is not None else float("nan"),
                    }
                )
            except InvalidInputError as exc:
                notes.append(f"FID not computed: {exc}")
        labelled = [(c, s) for c, s in zip(cases, samples, strict=True) if c.labels is not None]
        if self.classifier is not None and labelled:
            y = np.stack([np.asarray(c.labels) for c, _ in labelled])
            prob = self.classifier.predict_proba([s.ct for _, s in labelled])
            sc = classification_scores(y, prob, threshold=cfg.label_threshold)
            row.update({k: getattr(sc, k) for k in CLINICAL_KEYS})
            if not sc.auc_labels:
                notes.append("AUC: n/a: no label has both positive and negative evaluated cases.")
        mine = [r for r in per_case if r["method"] == method.key and r["seed"] == seed and "dice" in r]
        if mine:
            row["dice"] = _nan_mean([r["dice"] for r in mine])
            row["hd95"] = _nan_mean([r["hd95"] for r in mine])
            for name in COARSE_LABELS.values():
                for prefix in ("dice", "hd95"):
                    row[f"{prefix}_{name}"] = _nan_mean([r[f"{prefix}_{name}"] for r in mine])
        return row

    def _summarise(self, per_seed: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        cfg = self.config
        by_method: dict[str, dict[int, dict[str, Any]]] = {}
        for row in per_seed:
            by_method.setdefault(row["method"], {})[row["seed"]] = row
        ref = by_method.get(cfg.reference_method, {})
        out: dict[str, dict[str, Any]] = {}
        for m in self.methods:
            rows = by_method.get(m.key, {})
            metrics: dict[str, Any] = {}
            for spec in METRICS:
                vals = [rows[s].get(spec.key, float("nan")) for s in cfg.seeds if s in rows]
                if not any(math.isfinite(v) for v in vals):
                    continue
                lo, hi = bootstrap_ci(vals, confidence=cfg.confidence, n_resamples=cfg.n_bootstrap)
                entry: dict[str, Any] = {"mean": _nan_mean(vals), "ci_low": lo, "ci_high": hi, "per_seed": vals}
                if m.key != cfg.reference_method:
                    ref_vals = [ref.get(s, {}).get(spec.key, float("nan")) for s in cfg.seeds if s in rows]
                    if any(math.isfinite(v) for v in ref_vals):
                        test = wilcoxon_worse(ref_vals, vals, higher_is_better=spec.better == "higher", alpha=cfg.alpha)
                        entry.update({"p_value": test.p_value, "significant": test.significant})
                metrics[spec.key] = entry
            out[m.key] = {"label": m.label, "metrics": metrics}
        return out


def _unique(items: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return [x for x in items if not (x in seen or seen.add(x))]  # type: ignore[func-returns-value]
