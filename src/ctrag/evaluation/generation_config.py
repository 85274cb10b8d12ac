"""What ``ctrag evaluate generation`` is asked to do: its settings and the fixed method and metric vocabularies.

Kept apart from the runner (:mod:`ctrag.evaluation.ablation`) because more than the runner reads them: the CLI
checks ``--methods`` against ``METHODS`` and loads ``GenerationEvalConfig`` from a preset, the held-out guard
(:mod:`ctrag.data.heldout`) is tested against the same section, and the tables (:mod:`ctrag.evaluation.tables`)
lay out their columns from ``METRICS``. None of them needs the generation and scoring code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ctrag.data.case import SPLITS
from ctrag.data.labels import COARSE_LABELS
from ctrag.errors import ConfigError, InvalidInputError
from ctrag.evaluation.external import check_external_name
from ctrag.evaluation.fid import FIDConfig


@dataclass(frozen=True)
class MethodSpec:
    key: str
    label: str
    strategy: str
    uses_gt_mask: bool = False
    external: bool = False
    """Volumes read from another method's outputs (``ctrag.evaluation.external``), not generated here."""
    conditioned: bool = False
    """An external method given an anatomy mask (scored for Dice/HD95 against that mask)."""

    @property
    def retrieves(self) -> bool:
        return self.strategy != "none" and not self.uses_gt_mask and not self.external

    @property
    def structural(self) -> bool:
        return self.retrieves or self.uses_gt_mask or self.conditioned


METHODS: dict[str, MethodSpec] = {
    "none": MethodSpec("none", "Text-only", "none"),
    "farthest": MethodSpec("farthest", "RAG-Farthest", "farthest"),
    "random": MethodSpec("random", "RAG-Random", "random"),
    "nearest": MethodSpec("nearest", "RAG-Nearest", "nearest"),
    "gt_mask": MethodSpec("gt_mask", "GT mask (upper bound)", "none", uses_gt_mask=True),
}


@dataclass(frozen=True)
class MetricSpec:
    key: str
    name: str
    better: str  # "higher" | "lower"
    group: str  # "fidelity" | "clinical" | "spatial"


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("fid_axial", "FID 2.5D axial", "lower", "fidelity"),
    MetricSpec("fid_coronal", "FID 2.5D coronal", "lower", "fidelity"),
    MetricSpec("fid_sagittal", "FID 2.5D sagittal", "lower", "fidelity"),
    MetricSpec("fid_avg", "FID 2.5D avg.", "lower", "fidelity"),
    MetricSpec("fid_3d", "FID 3D", "lower", "fidelity"),
    MetricSpec("auc_macro", "AUC macro", "higher", "clinical"),
    MetricSpec("auc_weighted", "AUC weighted", "higher", "clinical"),
    MetricSpec("precision_macro", "Precision macro", "higher", "clinical"),
    MetricSpec("precision_weighted", "Precision weighted", "higher", "clinical"),
    MetricSpec("dice", "Dice", "higher", "spatial"),
    MetricSpec("hd95", "HD95 (mm)", "lower", "spatial"),
    *(MetricSpec(f"dice_{n}", f"Dice {n}", "higher", "spatial_labels") for n in COARSE_LABELS.values()),
    *(MetricSpec(f"hd95_{n}", f"HD95 {n} (mm)", "lower", "spatial_labels") for n in COARSE_LABELS.values()),
)
"""Per-structure Dice/HD95 (group ``spatial_labels``) are means over the cases whose proxy has that structure; the
overall Dice/HD95 average each case over *its* proxy's structures, so methods whose proxies hold different
structures (a cropped proxy without lungs) are best compared per structure."""
METRIC_BY_KEY = {m.key: m for m in METRICS}
CLINICAL_KEYS: tuple[str, ...] = ("auc_macro", "auc_weighted", "precision_macro", "precision_weighted")


@dataclass
class GenerationEvalConfig:
    """Settings of ``ctrag evaluate generation`` (section ``evaluation`` of a preset)."""

    corpus: str | None = None
    """Corpus folder (``ctrag ingest`` output) holding the held-out cases."""
    pipeline: str | None = None
    """Generator run folder (``ctrag train ...`` output with ``pipeline.json``)."""
    index: str | None = None
    """Retrieval index folder (built from the train split only)."""
    split: str = "test"
    case_ids: tuple[str, ...] = ()
    """Evaluate only these cases (default: every case of ``split`` with a report and a CT)."""
    max_cases: int | None = None
    report_split: str | None = None
    """Also generate for held-out reports of this split that have no CT (CT-RATE validation reports ship without
    theirs). Every method except ``gt_mask`` (which needs the case's own mask) runs on them: their volumes join the
    generated side of FID and are scored for spatial agreement with their proxy (and, with labels and a
    classifier, for clinical consistency). Never ``train``: the index is built from it."""
    report_case_ids: tuple[str, ...] = ()
    """Only these report-only cases (default: the first ``max_report_cases`` of ``report_split`` in corpus order)."""
    max_report_cases: int | None = None
    methods: tuple[str, ...] = ("none", "farthest", "random", "nearest", "gt_mask")
    """ctrag's own methods (each needs the generator); may be empty when ``external`` names methods to score."""
    external: dict[str, str] = field(default_factory=dict)
    """Other methods' outputs to score as extra rows: name -> CSV (``case_id, seed, path[, mask]``; see
    :mod:`ctrag.evaluation.external`)."""
    reference_method: str = "nearest"
    """The row the Wilcoxon test compares against: one of ``methods`` or of ``external``'s names."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int | None = None
    cfg: float | None = None
    control_scale: float | None = None
    classifier: str | None = None
    """Classifier folder (``ctrag train classifier``); also the default FID feature extractor's weights."""
    label_threshold: float = 0.5
    fid: FIDConfig = field(default_factory=FIDConfig)
    spatial_reference_case_ids: tuple[str, ...] = ()
    """Cases for the "Real" spatial row (real CT segmented vs its own mask); default: evaluated cases with masks."""
    alpha: float = 0.05
    confidence: float = 0.95
    n_bootstrap: int = 2000
    figures: bool = True
    figure_cases: int = 3
    device: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"evaluation.methods: unknown {unknown}; known: {list(METHODS)}")
        if len(set(self.methods)) != len(self.methods) or not (self.methods or self.external):
            raise ConfigError(
                f"evaluation.methods must be a list without repeats, non-empty unless evaluation.external names "
                f"methods to score; got {list(self.methods)}"
            )
        clash = sorted(set(self.external) & set(METHODS))
        if clash:
            raise ConfigError(f"evaluation.external: names {clash} are ctrag's own methods; rename the external rows")
        for name in self.external:
            try:
                check_external_name(name)
            except InvalidInputError as exc:
                raise ConfigError(f"evaluation.external: {exc}") from None
        rows = [*self.methods, *self.external]
        if self.reference_method not in rows:
            raise ConfigError(f"evaluation.reference_method {self.reference_method!r} is not among the methods {rows}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"evaluation.seeds must be distinct non-negative integers, got {list(self.seeds)}")
        if self.split not in SPLITS:
            raise ConfigError(f"evaluation.split must be one of {SPLITS}, got {self.split!r}")
        if self.report_split is not None and (self.report_split not in SPLITS or self.report_split == "train"):
            raise ConfigError(
                f"evaluation.report_split must be a held-out split ({[s for s in SPLITS if s != 'train']}), "
                f"got {self.report_split!r}"
            )
        if self.report_case_ids and self.report_split is None:
            raise ConfigError("evaluation.report_case_ids needs evaluation.report_split")
        if not 0 < self.alpha < 1 or not 0 < self.confidence < 1:
            raise ConfigError("evaluation.alpha and evaluation.confidence must lie in (0, 1)")
