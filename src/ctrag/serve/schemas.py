"""Request and response models: the service's OpenAPI contract.

Bounds sit here, in the schema, so a client learns them from ``/openapi.json`` and a request outside them is a
422 before any model runs. Text fields stay within the one report limit of ``ctrag.data.report_text``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ctrag.data.labels import CT_RATE_LABELS
from ctrag.data.report_text import MAX_REPORT_BYTES

MAX_SEED = 2**31 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    models_loaded: bool
    generation: bool
    queue: dict[str, int]


class LabelEntry(BaseModel):
    value: int
    name: str
    rgb: tuple[int, int, int]
    alpha: int = Field(255, ge=0, le=255, description="Overlay opacity of this label (0: not drawn, e.g. the body).")


class LabelLegend(BaseModel):
    label_set: str
    labels: list[LabelEntry]


class SearchRequest(_Strict):
    text: str | None = Field(None, max_length=MAX_REPORT_BYTES, description="Report text to search with.")
    query_case: str | None = Field(
        None, max_length=128, description="Search with this corpus case's report instead (it must not be indexed)."
    )
    k: int = Field(5, ge=1, le=100)
    strategy: Literal["nearest", "topk", "mmr", "farthest", "random"] = "nearest"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    has_mask: bool = False
    has_volume: bool = False
    labels: list[str] = Field(
        default_factory=list,
        max_length=len(CT_RATE_LABELS),
        description="CT-RATE labels a case must carry (all of them).",
        json_schema_extra={"items": {"type": "string", "enum": list(CT_RATE_LABELS)}},
    )


class SearchHit(BaseModel):
    rank: int
    case_id: str
    patient_id: str
    split: str
    score: float
    report_excerpt: str
    report_text: str
    report_source: str
    labels: list[str] | None
    label_agreement: float | None = Field(
        None, description="Jaccard of the hit's CT-RATE labels with the query's (predicted for free text)."
    )
    has_volume: bool
    has_mask: bool


class SearchResponse(BaseModel):
    scorer: str
    indexed_cases: int
    query_labels: list[str] | None = Field(
        None, description="The query's labels: the case's own for query_case, predicted for free text."
    )
    query_labels_source: Literal["case", "predicted", "none"]
    hits: list[SearchHit]


class MaskFromJob(_Strict):
    job_id: str = Field(..., max_length=64)
    keep_labels: list[int] = Field(..., min_length=1, max_length=255, description="Proxy labels to keep.")


class MaskFromUpload(_Strict):
    upload_id: str = Field(..., max_length=64)
    mask_labels: Literal["auto", "coarse", "totalseg"] = "auto"


class JobRequest(_Strict):
    report: str = Field(..., min_length=1, max_length=MAX_REPORT_BYTES)
    strategy: Literal["nearest", "random", "farthest", "none"] = "nearest"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    cfg: float | None = Field(None, ge=0.0, le=50.0, description="Classifier-free guidance (default: the preset's).")
    control_scale: float | None = Field(None, ge=0.0, le=10.0)
    steps: int | None = Field(None, ge=1, le=1000)
    mask: MaskFromJob | MaskFromUpload | None = Field(
        None, description="Use an edited proxy of an earlier job, or an uploaded mask, instead of retrieval."
    )


class JobProgress(BaseModel):
    stage: str
    done: int
    total: int


class RetrievedCase(BaseModel):
    case_id: str
    score: float
    strategy: str
    proxy: str = ""
    report_source: str = ""


class JobFiles(BaseModel):
    ct: str
    mask: str | None
    provenance: str
    png: str


class JobResult(BaseModel):
    retrieved: list[RetrievedCase]
    mask_source: str
    mask_edit: dict[str, object] | None = None
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    labels_present: list[int]
    timings_s: dict[str, float]
    files: JobFiles


class JobStatus(BaseModel):
    job_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: JobProgress
    error: str | None
    created: float
    started: float | None
    finished: float | None
    result: JobResult | None


class CaseFiles(BaseModel):
    volume: str | None
    mask: str | None


class CaseInfo(BaseModel):
    case_id: str
    patient_id: str
    split: str
    dataset: str
    report_text: str
    report_source: str
    labels: list[str] | None
    has_volume: bool
    has_mask: bool
    files: CaseFiles


class UploadInfo(BaseModel):
    upload_id: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    labels_present: list[int]


class ErrorResponse(BaseModel):
    detail: str
