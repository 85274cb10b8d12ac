"""The FastAPI application: routes that turn HTTP requests into :class:`~ctrag.serve.service.CtragService` calls.

``create_app(config)`` builds the app without loading a model. Every ``/api`` route needs the access token when
one is configured; the static page (``/``, ``/static``) and the OpenAPI document do not, because they hold no
data. Errors are JSON ``{"detail": ...}`` with the status the problem deserves (400 bad input, 401 token, 404
unknown id, 409 not ready, 413 too large, 422 schema, 429 queue full), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ctrag._version import __version__
from ctrag.errors import CtragError, WeightsNotFoundError
from ctrag.serve import schemas
from ctrag.serve.config import ServeConfig
from ctrag.serve.jobs import TERMINAL, Job, JobQueue, QueueFull
from ctrag.serve.security import JOB_FILES, JOB_ID, check_name, token_matches
from ctrag.serve.service import CtragService, NotFound, NotReady, TooLarge

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
EVENT_POLL_S = 0.1
KEEPALIVE_S = 15.0
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    # The page loads only its own scripts and styles (no inline code); NiiVue needs blob: workers and images.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
        "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}
MEDIA_TYPES = {".gz": "application/gzip", ".json": "application/json", ".png": "image/png"}

_bearer = HTTPBearer(auto_error=False, description="The service's access token (when it was started with one).")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (400, 401, 404, 409, 413, 429)
}


def _status_of(exc: CtragError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, NotReady | WeightsNotFoundError):
        return 409
    if isinstance(exc, TooLarge):
        return 413
    return 400


def create_app(config: ServeConfig, service: CtragService | None = None) -> FastAPI:
    """The service's ASGI app. ``service`` lets tests share loaded models between apps."""
    svc = service or CtragService(config)

    def runner(job: Job, progress: Any) -> dict[str, Any]:
        mask = job.request.get("mask") or {}
        source = queue.get(mask["job_id"]) if "job_id" in mask else None
        return svc.run_job(job, progress, source)

    queue = JobQueue(runner, max_queued=config.max_queued, keep_jobs=config.keep_jobs)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        queue.close()

    app = FastAPI(
        title="ctrag",
        version=__version__,
        description="Retrieval-augmented CT: case search, report-to-CT generation jobs, case and output files.",
        lifespan=lifespan,
    )
    app.state.service = svc
    app.state.queue = queue
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(config.hosts_accepted))

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(CtragError)
    async def ctrag_error(_: Request, exc: CtragError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The default echoes the whole input back; a report can be 32 kB, so say only where and what.
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:5]
        ]
        return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return JSONResponse({"detail": "internal error; see the service log"}, status_code=500)

    def require_token(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> None:
        if not token_matches(config.token, request.headers.get("authorization")):
            raise HTTPException(401, "missing or wrong access token", headers={"WWW-Authenticate": "Bearer"})

    api = Depends(require_token)

    # ------------------------------------------------------------------ service
    @app.get("/api/health", response_model=schemas.Health, dependencies=[api], responses=ERRORS)
    def health() -> dict[str, Any]:
        return svc.health(queue.counts())

    @app.get("/api/labels", response_model=schemas.LabelLegend, dependencies=[api], responses=ERRORS)
    def labels() -> dict[str, Any]:
        return svc.legend()

    # ------------------------------------------------------------------ search
    @app.post("/api/search", response_model=schemas.SearchResponse, dependencies=[api], responses=ERRORS)
    def search(body: schemas.SearchRequest) -> dict[str, Any]:
        return svc.search(body.model_dump())

    # ------------------------------------------------------------------ cases
    @app.get("/api/cases/{case_id}", response_model=schemas.CaseInfo, dependencies=[api], responses=ERRORS)
    def case_info(case_id: str) -> dict[str, Any]:
        return svc.case_info(case_id)

    @app.get("/api/cases/{case_id}/volume", dependencies=[api], responses=ERRORS, response_class=FileResponse)
    def case_volume(case_id: str) -> FileResponse:
        path = svc.case_volume_file(case_id)
        suffix = _nii_suffix(path)
        media = "application/gzip" if suffix == ".nii.gz" else "application/octet-stream"
        return FileResponse(path, media_type=media, filename=f"{case_id}_ct{suffix}")

    @app.get("/api/cases/{case_id}/mask", dependencies=[api], responses=ERRORS, response_class=FileResponse)
    def case_mask(case_id: str) -> FileResponse:
        path = svc.case_mask_file(case_id)
        return FileResponse(path, media_type="application/gzip", filename=f"{case_id}_mask.nii.gz")

    # ------------------------------------------------------------------ uploads
    @app.post(
        "/api/uploads/mask",
        response_model=schemas.UploadInfo,
        status_code=201,
        dependencies=[api],
        responses=ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def upload_mask(request: Request) -> dict[str, Any]:
        """A label mask (NIfTI, .nii or .nii.gz bytes as the body) to generate from; checked before it is kept."""
        cap = config.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise TooLarge(f"upload of {declared} bytes is over the limit of {cap} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise TooLarge(f"upload over the limit of {cap} bytes")
            chunks.append(chunk)
        gz = bool(chunks) and b"".join(chunks[:1])[:2] == b"\x1f\x8b"
        return await asyncio.to_thread(svc.save_upload, chunks, filename_gz=gz)

    # ------------------------------------------------------------------ jobs
    @app.post("/api/jobs", response_model=schemas.JobStatus, status_code=202, dependencies=[api], responses=ERRORS)
    def submit_job(body: schemas.JobRequest) -> dict[str, Any]:
        request = body.model_dump(exclude_none=True)
        svc.check_job_request(request, queue.get)
        try:
            job = queue.submit(request)
        except QueueFull as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": "5"}) from None
        return job.snapshot()

    def _found(job_id: str, found: Any) -> Any:
        if found is None:
            raise NotFound(f"no job {job_id!r}")
        return found

    def _job(job_id: str) -> Job:
        return _found(job_id, queue.get(check_name(job_id, JOB_ID, "job id")))

    @app.get("/api/jobs/{job_id}", response_model=schemas.JobStatus, dependencies=[api], responses=ERRORS)
    def job_status(job_id: str) -> dict[str, Any]:
        return _found(job_id, queue.snapshot(check_name(job_id, JOB_ID, "job id")))

    @app.post("/api/jobs/{job_id}/cancel", response_model=schemas.JobStatus, dependencies=[api], responses=ERRORS)
    def cancel_job(job_id: str) -> dict[str, Any]:
        return _found(job_id, queue.cancel(check_name(job_id, JOB_ID, "job id")))

    @app.get(
        "/api/jobs/{job_id}/events",
        dependencies=[api],
        response_class=StreamingResponse,
        responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    )
    async def job_events(job_id: str) -> StreamingResponse:
        """Server-sent events: ``event: status`` with the job's JSON status on every change, until it ends."""
        _job(job_id)

        async def stream() -> AsyncIterator[str]:
            seen, quiet = -1, 0.0
            while True:
                job = queue.get(job_id)
                if job is None:
                    return
                if job.version != seen:
                    seen, quiet = job.version, 0.0
                    snap = queue.snapshot(job_id)
                    yield f"event: status\ndata: {json.dumps(snap, separators=(',', ':'))}\n\n"
                    if snap is not None and snap["state"] in TERMINAL:
                        return
                elif quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keepalive\n\n"
                await asyncio.sleep(EVENT_POLL_S)
                quiet += EVENT_POLL_S

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @app.get("/api/jobs/{job_id}/files/{name}", dependencies=[api], responses=ERRORS, response_class=FileResponse)
    def job_file(job_id: str, name: str) -> FileResponse:
        job = _job(job_id)
        if name not in JOB_FILES:
            raise NotFound(f"no file {name[:80]!r}; jobs have {sorted(JOB_FILES)}")
        if job.state != "succeeded":
            raise NotReady(f"job {job_id} is {job.state}; its files exist once it has succeeded")
        path = svc.job_dir(job_id) / JOB_FILES[name]
        if not path.is_file():
            raise NotFound(f"job {job_id} has no {name}")
        return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"), filename=name)

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _nii_suffix(path: Path) -> str:
    return ".nii.gz" if path.name.endswith(".gz") else ".nii"
