"""Bounded concurrency on loopback: 20 parallel searches and 3 generation jobs against the live uvicorn server.

Every request must succeed, parallel answers to one query must be identical, and each job's files must be whole
and its own (same seed -> same voxels, whatever ran beside it).
"""

from __future__ import annotations

import gzip
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import nibabel as nib
import numpy as np

from tests.serve.conftest import LiveServer

QUERIES = (
    "Bilateral pleural effusion with passive atelectasis in both lower lobes.",
    "Mass in the right lung upper lobe, suspicious for malignancy.",
    "Emphysematous changes in both lungs. No pleural effusion.",
    "Coronary artery calcification. Cardiomegaly.",
)
SEARCHES = 20
JOB_SEEDS = (0, 1, 0)


def _search(url: str, text: str) -> tuple[int, list[tuple[str, float]]]:
    response = httpx.post(f"{url}/api/search", json={"text": text, "k": 5}, timeout=120)
    hits = [(h["case_id"], h["score"]) for h in response.json().get("hits", [])] if response.is_success else []
    return response.status_code, hits


def _job(url: str, seed: int) -> dict:
    with httpx.Client(base_url=url, timeout=120) as client:
        submitted = client.post("/api/jobs", json={"report": QUERIES[0], "seed": seed, "steps": 6})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = client.get(f"/api/jobs/{job_id}").json()
            if status["state"] not in ("queued", "running"):
                break
            time.sleep(0.2)
        assert status["state"] == "succeeded", status
        files = {name: client.get(link) for name, link in status["result"]["files"].items() if link}
        assert all(r.status_code == 200 for r in files.values())
        ct = nib.Nifti1Image.from_bytes(gzip.decompress(files["ct"].content))
        provenance = files["provenance"].json()
        return {"job_id": job_id, "ct": np.asarray(ct.dataobj), "provenance": provenance, "seed": seed}


def test_parallel_searches_and_jobs_all_succeed(live_server: LiveServer) -> None:
    url = live_server.url
    with ThreadPoolExecutor(max_workers=SEARCHES + len(JOB_SEEDS)) as pool:
        jobs = [pool.submit(_job, url, seed) for seed in JOB_SEEDS]
        searches = [pool.submit(_search, url, QUERIES[i % len(QUERIES)]) for i in range(SEARCHES)]
        search_results = [f.result() for f in searches]
        job_results = [f.result() for f in jobs]
    assert [status for status, _ in search_results] == [200] * SEARCHES
    for i, (_, hits) in enumerate(search_results):
        assert len(hits) == 5
        assert hits == search_results[i % len(QUERIES)][1]  # the same query gives the same ranking every time
    assert len({r["job_id"] for r in job_results}) == len(JOB_SEEDS)
    for result in job_results:
        provenance = result["provenance"]
        assert provenance["service_job"] == result["job_id"] and provenance["seed"] == result["seed"]
        assert result["ct"].shape == tuple(provenance["shape"])
    np.testing.assert_array_equal(job_results[0]["ct"], job_results[2]["ct"])
    assert not np.array_equal(job_results[0]["ct"], job_results[1]["ct"])
    health = httpx.get(f"{url}/api/health", timeout=30).json()
    assert health["queue"]["queued"] == 0 and health["queue"]["running"] == 0
