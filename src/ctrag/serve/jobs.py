"""A bounded queue of background jobs with progress, cancellation and change notification.

Generation takes seconds to minutes, so ``POST /api/jobs`` only enqueues. One worker thread per slot runs jobs in
order (one slot by default: a CPU generation already uses every core). A job reports ``progress(stage, done,
total)`` through the library's one :data:`~ctrag.utils.progress.ProgressFn`; a cancel request makes the next
progress call raise :class:`JobCancelled`, so the run stops at the next sampling step without leaving a file
behind (outputs are written atomically at the very end). Every state change bumps ``version`` and notifies a
condition, which the event stream waits on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ctrag.errors import CtragError
from ctrag.serve.security import new_id

logger = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class JobCancelled(Exception):
    """Raised inside a running job (from its progress callback) once a cancel was requested."""


class QueueFull(Exception):
    """No room for another job: ``max_queued`` jobs are waiting or running."""


@dataclass
class Job:
    """One job: its request, where it stands, and (when done) its result or error."""

    job_id: str
    request: dict[str, Any]
    state: JobState = "queued"
    stage: str = ""
    done: int = 0
    total: int = 0
    error: str | None = None
    result: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False
    version: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "progress": {"stage": self.stage, "done": self.done, "total": self.total},
            "error": self.error,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "result": self.result,
        }


JobRunner = Callable[[Job, Callable[[str, int, int], None]], dict[str, Any]]
"""Runs one job: gets the job and a progress function, returns the JSON-ready result."""


class JobQueue:
    """Jobs by id, a FIFO of waiting ones and ``workers`` threads that run them through ``runner``."""

    def __init__(self, runner: JobRunner, *, max_queued: int = 4, keep_jobs: int = 200, workers: int = 1) -> None:
        self._runner = runner
        self.max_queued = max_queued
        self.keep_jobs = keep_jobs
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._waiting: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"ctrag-job-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ API
    def submit(self, request: dict[str, Any]) -> Job:
        with self._cond:
            if self._closed:
                raise QueueFull("the service is shutting down")
            active = sum(1 for j in self._jobs.values() if j.state in ("queued", "running"))
            if active >= self.max_queued:
                raise QueueFull(f"{active} jobs are queued or running (limit {self.max_queued}); retry later")
            job = Job(job_id=new_id(), request=request)
            self._jobs[job.job_id] = job
            self._waiting.append(job.job_id)
            self._forget_old()
            self._cond.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def snapshot(self, job_id: str) -> dict[str, Any] | None:
        with self._cond:
            job = self._jobs.get(job_id)
            return None if job is None else job.snapshot()

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a waiting job at once, a running one at its next progress step; finished jobs stay as they are."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.state == "queued":
                self._waiting.remove(job_id)
                self._finish(job, "cancelled", error="cancelled before it started")
            elif job.state == "running":
                job.cancel_requested = True
                self._touch(job)
            return job.snapshot()

    def wait_for_change(self, job_id: str, seen_version: int, timeout: float) -> tuple[int, dict[str, Any] | None]:
        """Block until the job's version passes ``seen_version`` (or ``timeout``); return (version, snapshot)."""
        with self._cond:
            self._cond.wait_for(
                lambda: (j := self._jobs.get(job_id)) is None or j.version > seen_version or self._closed, timeout
            )
            job = self._jobs.get(job_id)
            return (seen_version, None) if job is None else (job.version, job.snapshot())

    def counts(self) -> dict[str, int]:
        with self._cond:
            out = {"queued": 0, "running": 0, "max_queued": self.max_queued}
            for job in self._jobs.values():
                if job.state in ("queued", "running"):
                    out[job.state] += 1
            return out

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs, cancel waiting and running ones, and let the workers end."""
        with self._cond:
            self._closed = True
            for job_id in list(self._waiting):
                self._finish(self._jobs[job_id], "cancelled", error="the service stopped")
            self._waiting.clear()
            for job in self._jobs.values():
                if job.state == "running":
                    job.cancel_requested = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or bool(self._waiting))
                if self._closed:
                    return
                job = self._jobs[self._waiting.pop(0)]
                job.state, job.started = "running", time.time()
                self._touch(job)
            self._run(job)

    def _run(self, job: Job) -> None:
        def progress(stage: str, done: int, total: int) -> None:
            with self._cond:
                if job.cancel_requested:
                    raise JobCancelled
                job.stage, job.done, job.total = stage, int(done), int(total)
                self._touch(job)

        try:
            result = self._runner(job, progress)
        except JobCancelled:
            with self._cond:
                self._finish(job, "cancelled", error="cancelled while running")
        except CtragError as exc:
            with self._cond:
                self._finish(job, "failed", error=str(exc))
        except Exception as exc:  # a job must never take the worker down; the log keeps the traceback
            logger.exception("job %s failed", job.job_id)
            with self._cond:
                self._finish(job, "failed", error=f"internal error ({type(exc).__name__}); see the service log")
        else:
            with self._cond:
                job.result = result
                job.done = job.total
                self._finish(job, "succeeded")

    # ------------------------------------------------------------------ helpers (caller holds the lock)
    def _touch(self, job: Job) -> None:
        job.version += 1
        self._cond.notify_all()

    def _finish(self, job: Job, state: JobState, error: str | None = None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        self._touch(job)

    def _forget_old(self) -> None:
        finished = [jid for jid, j in self._jobs.items() if j.state in TERMINAL]
        for job_id in finished[: max(0, len(self._jobs) - self.keep_jobs)]:
            del self._jobs[job_id]
