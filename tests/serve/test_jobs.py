"""The job queue on its own: bounds, order, cancellation, failures and change notification (no models)."""

from __future__ import annotations

import threading
import time

import pytest

from ctrag.errors import InvalidInputError
from ctrag.serve.jobs import JobQueue, QueueFull


def _wait(queue: JobQueue, job_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = queue.snapshot(job_id)
        assert snap is not None
        if snap["state"] not in ("queued", "running"):
            return snap
        time.sleep(0.01)
    raise AssertionError("job did not finish")


def _stepper(steps: int, gate: threading.Event | None = None):  # type: ignore[no-untyped-def]
    def run(job, progress):  # type: ignore[no-untyped-def]
        if gate is not None:
            gate.wait(10)
        for i in range(steps + 1):
            progress("sampling", i, steps)
            time.sleep(0.005)
        return {"value": job.request["value"]}

    return run


def test_jobs_run_in_order_and_keep_their_results() -> None:
    queue = JobQueue(_stepper(3), max_queued=3)
    ids = [queue.submit({"value": i}).job_id for i in range(3)]
    results = [_wait(queue, job_id) for job_id in ids]
    assert [r["result"] for r in results] == [{"value": 0}, {"value": 1}, {"value": 2}]
    assert all(r["state"] == "succeeded" and r["progress"] == {"stage": "sampling", "done": 3, "total": 3}
               for r in results)  # fmt: skip
    assert results[0]["finished"] <= results[1]["started"]
    queue.close()


def test_ids_are_random_and_url_safe() -> None:
    queue = JobQueue(_stepper(0), max_queued=50)
    ids = {queue.submit({"value": i}).job_id for i in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and all(c.isalnum() or c in "-_" for c in i) for i in ids)
    queue.close()


def test_full_queue_refuses_and_frees_up_when_a_job_ends() -> None:
    gate = threading.Event()
    queue = JobQueue(_stepper(2, gate), max_queued=2)
    first = queue.submit({"value": 1})
    queue.submit({"value": 2})
    with pytest.raises(QueueFull, match="limit 2"):
        queue.submit({"value": 3})
    gate.set()
    _wait(queue, first.job_id)
    assert queue.submit({"value": 4}).job_id
    queue.close()


def test_cancel_waiting_and_running_jobs() -> None:
    gate = threading.Event()
    queue = JobQueue(_stepper(10_000, gate), max_queued=3)
    running, waiting = queue.submit({"value": 1}), queue.submit({"value": 2})
    snap = queue.cancel(waiting.job_id)
    assert snap is not None and snap["state"] == "cancelled" and snap["started"] is None
    gate.set()
    while queue.snapshot(running.job_id)["progress"]["done"] < 3:  # type: ignore[index]
        time.sleep(0.005)
    queue.cancel(running.job_id)
    final = _wait(queue, running.job_id)
    assert final["state"] == "cancelled" and final["result"] is None and final["error"] == "cancelled while running"
    assert queue.cancel("unknown-id") is None
    queue.close()


def test_failures_keep_the_message_of_ctrag_errors_and_hide_others() -> None:
    def run(job, progress):  # type: ignore[no-untyped-def]
        if job.request["kind"] == "input":
            raise InvalidInputError("mask on another grid")
        raise RuntimeError("secret internals /home/user/path")

    queue = JobQueue(run, max_queued=2)
    a, b = queue.submit({"kind": "input"}), queue.submit({"kind": "bug"})
    assert _wait(queue, a.job_id)["error"] == "mask on another grid"
    error = _wait(queue, b.job_id)["error"]
    assert "RuntimeError" in error and "/home/user" not in error
    c = queue.submit({"kind": "input"})  # a failing job never kills the worker: the same queue runs on
    assert _wait(queue, c.job_id)["state"] == "failed"
    queue.close()


def test_wait_for_change_wakes_on_progress() -> None:
    gate = threading.Event()
    queue = JobQueue(_stepper(2, gate), max_queued=1)
    job = queue.submit({"value": 1})
    version, snap = queue.wait_for_change(job.job_id, -1, 1.0)
    assert snap is not None and snap["state"] in ("queued", "running")
    gate.set()
    versions = [version]
    while snap is not None and snap["state"] not in ("succeeded", "failed"):
        version, snap = queue.wait_for_change(job.job_id, version, 5.0)
        versions.append(version)
    assert versions == sorted(versions) and len(versions) >= 2
    queue.close()


def test_finished_jobs_beyond_keep_jobs_are_forgotten() -> None:
    queue = JobQueue(_stepper(0), max_queued=1, keep_jobs=3)
    ids = []
    for i in range(6):
        ids.append(queue.submit({"value": i}).job_id)
        _wait(queue, ids[-1])
    assert queue.get(ids[0]) is None and queue.get(ids[-1]) is not None


def test_close_cancels_waiting_jobs_and_refuses_new_ones() -> None:
    gate = threading.Event()
    queue = JobQueue(_stepper(10_000, gate), max_queued=3)
    queue.submit({"value": 1})
    waiting = queue.submit({"value": 2})
    gate.set()
    queue.close(timeout=5)
    assert queue.snapshot(waiting.job_id)["state"] == "cancelled"  # type: ignore[index]
    with pytest.raises(QueueFull, match="shutting down"):
        queue.submit({"value": 3})
