"""The HTTP API with the tiny trained generator and a hybrid index over real shipped cases."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from ctrag.data.case import Corpus
from ctrag.data.labels import CT_RATE_LABELS
from tests.serve.conftest import TOKEN, wait_for_job

REPORT = "Bilateral pleural effusion with passive atelectasis in both lower lobes. No pulmonary nodule."
FAST = {"steps": 4}


def _nifti(content: bytes) -> nib.Nifti1Image:
    data = gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content
    return nib.Nifti1Image.from_bytes(data)


def _finished_job(client, **request) -> dict:  # type: ignore[no-untyped-def]
    response = client.post("/api/jobs", json={"report": REPORT, **FAST, **request})
    assert response.status_code == 202, response.text
    status = wait_for_job(client, response.json()["job_id"])
    assert status["state"] == "succeeded", status
    return status


# ---------------------------------------------------------------------------------------------------- service


def test_health_reports_version_models_and_queue(client) -> None:  # type: ignore[no-untyped-def]
    from ctrag._version import __version__

    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["version"] == __version__
    assert body["models_loaded"] is True and body["generation"] is True
    assert body["queue"] == {"queued": 0, "running": 0, "max_queued": 4}


def test_legend_lists_the_controlnet_labels_with_the_png_colours(client) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/api/labels").json()
    assert body["label_set"] == "coarse"
    names = {entry["name"]: entry for entry in body["labels"]}
    assert set(names) == {"body", "lung_left", "lung_right", "airway", "bone"}
    assert names["lung_left"]["rgb"] == [51, 128, 255]  # COARSE_COLOURS[2] = (0.2, 0.5, 1.0)
    assert names["body"]["alpha"] == 0 and names["lung_left"]["alpha"] == 255  # the body would hide the CT


def test_openapi_schema_names_every_route_and_the_bearer_scheme(client) -> None:  # type: ignore[no-untyped-def]
    schema = client.get("/openapi.json").json()
    for path in (
        "/api/search",
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/events",
        "/api/jobs/{job_id}/cancel",
        "/api/jobs/{job_id}/files/{name}",
        "/api/cases/{case_id}",
        "/api/cases/{case_id}/volume",
        "/api/cases/{case_id}/mask",
        "/api/uploads/mask",
        "/api/health",
    ):
        assert path in schema["paths"], path
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["components"]["schemas"]["JobRequest"]["properties"]["seed"]["maximum"] == 2**31 - 1


def test_page_and_vendored_niivue_are_served(client) -> None:  # type: ignore[no-untyped-def]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "niivue.umd.js" in page.text
    assert page.headers["x-content-type-options"] == "nosniff"
    lib = client.get("/static/vendor/niivue/niivue.umd.js")
    assert lib.status_code == 200 and len(lib.content) > 1_000_000


# ---------------------------------------------------------------------------------------------------- search


def test_search_ranks_training_cases_with_predicted_query_labels(client) -> None:  # type: ignore[no-untyped-def]
    body = client.post("/api/search", json={"text": REPORT, "k": 5}).json()
    assert body["scorer"] == "hybrid" and body["query_labels_source"] == "predicted"
    assert "Pleural effusion" in body["query_labels"]
    hits = body["hits"]
    assert [h["rank"] for h in hits] == list(range(5))
    assert all(h["split"] == "train" for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    labelled = [h for h in hits if h["labels"] is not None]
    assert labelled and all(0.0 <= h["label_agreement"] <= 1.0 for h in labelled)
    assert any("Pleural effusion" in h["labels"] for h in labelled)


def test_search_with_a_held_out_case_uses_its_labels_and_refuses_an_indexed_one(  # type: ignore[no-untyped-def]
    client, gen_corpus: Corpus
) -> None:
    val = next(c for c in gen_corpus if c.split == "val" and c.labels is not None and c.has_report)
    body = client.post("/api/search", json={"query_case": val.case_id, "k": 3}).json()
    assert body["query_labels_source"] == "case"
    assert body["query_labels"] == [name for name, v in zip(CT_RATE_LABELS, val.labels, strict=True) if v]
    indexed = client.post("/api/search", json={"query_case": body["hits"][0]["case_id"]})
    assert indexed.status_code == 400 and "index" in indexed.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"text": "   "}, 400),
        ({}, 400),
        ({"text": "effusion", "query_case": "x"}, 400),
        ({"text": "effusion", "labels": ["Not a label"]}, 400),
        ({"text": "effusion", "k": 0}, 422),
        ({"text": "effusion", "strategy": "best"}, 422),
        ({"text": "effusion", "unexpected": 1}, 422),
        ({"text": "x" * 40_000}, 422),
    ],
)
def test_bad_search_requests_get_a_json_4xx(client, payload: dict, status: int) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/api/search", json=payload)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


def test_lone_surrogate_in_a_query_is_bad_input_not_a_crash(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        "/api/search", content=b'{"text": "effusion \\ud800"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and "text" in response.json()["detail"]  # refused by the JSON parser


# ---------------------------------------------------------------------------------------------------- cases


def test_case_endpoints_serve_report_volume_and_mask_on_one_grid(client, gen_corpus: Corpus) -> None:  # type: ignore[no-untyped-def]
    case = next(c for c in gen_corpus if c.split == "train" and c.has_volume and c.has_mask)
    info = client.get(f"/api/cases/{case.case_id}").json()
    assert info["report_text"] == case.report_text and info["report_source"] == case.report_source
    volume = _nifti(client.get(info["files"]["volume"]).content)
    mask = _nifti(client.get(info["files"]["mask"]).content)
    assert volume.shape == mask.shape
    np.testing.assert_allclose(volume.affine, mask.affine, atol=1e-4)
    values = set(np.unique(np.asarray(mask.dataobj)).tolist())
    assert values <= {0, 1, 2, 3, 4, 5} and len(values) > 1  # converted to the viewer's coarse labels


@pytest.mark.parametrize(
    "path",
    [
        "/api/cases/..%2F..%2Fetc%2Fpasswd",
        "/api/cases/%2e%2e",
        "/api/cases/..",
        "/api/cases/%252e%252e%252fmanifest.jsonl",
        "/api/cases/.hidden",
        "/api/cases/a%00b",
        "/api/cases/%2Fetc%2Fpasswd/volume",
        "/api/jobs/..%2F..%2Fuploads/files/ct.nii.gz",
        "/api/jobs/AAAAAAAAAAAAAAAAAAAAAA/files/..%2Frequest.json",
        "/api/jobs/AAAAAAAAAAAAAAAAAAAAAA",
        "/api/cases/no_such_case",
    ],
)
def test_traversal_and_unknown_ids_never_reach_a_file(client, path: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(path)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert response.headers["content-type"].startswith("application/json")


# ---------------------------------------------------------------------------------------------------- jobs


def test_job_writes_ct_mask_provenance_and_png_with_one_affine(client) -> None:  # type: ignore[no-untyped-def]
    status = _finished_job(client, seed=3)
    result = status["result"]
    assert result["retrieved"] and result["mask_source"] == "retrieval"
    assert status["progress"]["done"] == status["progress"]["total"]
    ct = _nifti(client.get(result["files"]["ct"]).content)
    mask = _nifti(client.get(result["files"]["mask"]).content)
    provenance = client.get(result["files"]["provenance"]).json()
    png = client.get(result["files"]["png"])
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(ct.shape) == result["shape"] == provenance["shape"]
    np.testing.assert_allclose(ct.affine, np.asarray(provenance["affine"]), atol=1e-4)
    np.testing.assert_allclose(mask.affine, ct.affine, atol=1e-4)
    assert provenance["seed"] == 3 and provenance["service_job"] == status["job_id"]
    assert provenance["retrieved"][0]["case_id"] == result["retrieved"][0]["case_id"]
    assert sorted(int(v) for v in np.unique(np.asarray(mask.dataobj)) if v) == result["labels_present"]
    assert "report" not in json.dumps(provenance).lower().replace("report_sha256", "").replace("report_source", "")


def test_same_seed_gives_the_same_ct_and_job_ids_are_unguessable(client) -> None:  # type: ignore[no-untyped-def]
    a, b = _finished_job(client, seed=5), _finished_job(client, seed=5)
    assert a["job_id"] != b["job_id"] and len(a["job_id"]) == 22
    vol_a = np.asarray(_nifti(client.get(a["result"]["files"]["ct"]).content).dataobj)
    vol_b = np.asarray(_nifti(client.get(b["result"]["files"]["ct"]).content).dataobj)
    np.testing.assert_array_equal(vol_a, vol_b)


def test_event_stream_reports_monotone_progress_and_ends_with_the_final_state(client) -> None:  # type: ignore[no-untyped-def]
    job_id = client.post("/api/jobs", json={"report": REPORT, "steps": 30}).json()["job_id"]
    events = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = iter(stream.iter_lines())
        for line in lines:
            if line.startswith("event:"):
                assert line == "event: status"
            elif line.startswith("data:"):
                events.append(json.loads(line[5:]))
    assert events[-1]["state"] == "succeeded" and events[-1]["result"]["files"]["ct"]
    sampling = [e["progress"]["done"] for e in events if e["progress"]["stage"] == "sampling"]
    # The stream sends the latest state on every poll (changes in between coalesce), in order.
    assert len(sampling) >= 2 and sampling == sorted(sampling)
    assert events[-1]["progress"]["done"] == events[-1]["progress"]["total"]
    assert {e["state"] for e in events} >= {"running", "succeeded"}


def test_cancel_stops_a_running_job_and_writes_nothing(client, service) -> None:  # type: ignore[no-untyped-def]
    job_id = client.post("/api/jobs", json={"report": REPORT, "steps": 200}).json()["job_id"]
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["progress"]["stage"] == "sampling":
                assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
            if line.startswith("data:") and json.loads(line[5:])["state"] in ("cancelled", "succeeded", "failed"):
                break
    status = wait_for_job(client, job_id)
    assert status["state"] == "cancelled" and status["result"] is None
    assert not (service.config.jobs_dir / job_id).exists()
    assert client.get(f"/api/jobs/{job_id}/files/ct.nii.gz").status_code == 409


def test_full_queue_answers_429_with_retry_after(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_queued=1, keep_jobs=10)
    first = client.post("/api/jobs", json={"report": REPORT, "steps": 200})
    assert first.status_code == 202
    second = client.post("/api/jobs", json={"report": REPORT, **FAST})
    assert second.status_code == 429 and second.headers["retry-after"] == "5"
    assert "limit 1" in second.json()["detail"]
    client.post(f"/api/jobs/{first.json()['job_id']}/cancel")
    assert wait_for_job(client, first.json()["job_id"])["state"] == "cancelled"
    assert client.post("/api/jobs", json={"report": REPORT, **FAST}).status_code == 202


def test_regenerating_with_dropped_labels_uses_the_edited_proxy(client) -> None:  # type: ignore[no-untyped-def]
    first = _finished_job(client, seed=2)
    present = first["result"]["labels_present"]
    assert len(present) >= 2
    keep = [present[0]]
    edited = _finished_job(client, seed=2, mask={"job_id": first["job_id"], "keep_labels": keep})
    result = edited["result"]
    assert result["mask_source"] == "user" and result["labels_present"] == keep
    assert result["mask_edit"]["from_job"] == first["job_id"]
    assert result["retrieved"][0]["case_id"] == first["result"]["retrieved"][0]["case_id"]
    provenance = client.get(result["files"]["provenance"]).json()
    assert provenance["mask_edit"]["dropped"] and provenance["strategy"] == "user-mask"
    absent = client.post("/api/jobs", json={"report": REPORT, "mask": {"job_id": first["job_id"], "keep_labels": [99]}})
    assert absent.status_code == 400 and "none of the labels" in absent.json()["detail"]


def test_bad_job_requests_are_refused_before_queueing(client) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ({"report": ""}, 422),
        ({"report": " \n "}, 400),
        ({"report": REPORT, "cfg": -1}, 422),
        ({"report": REPORT, "seed": -1}, 422),
        ({"report": REPORT, "strategy": "best"}, 422),
        ({"report": REPORT, "mask": {"job_id": "AAAAAAAAAAAAAAAAAAAAAA", "keep_labels": [1]}}, 404),
        ({"report": REPORT, "mask": {"job_id": "../../etc", "keep_labels": [1]}}, 400),
        ({"report": REPORT, "mask": {"upload_id": "AAAAAAAAAAAAAAAAAAAAAA"}}, 404),
    ]
    for payload, status in cases:
        response = client.post("/api/jobs", json=payload)
        assert response.status_code == status, (payload, response.text)
    assert client.get("/api/health").json()["queue"]["queued"] == 0


# ---------------------------------------------------------------------------------------------------- uploads


def _mask_bytes(array: np.ndarray, affine: np.ndarray, gz: bool = True) -> bytes:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


def test_uploaded_mask_is_validated_stored_and_generates(client, service, gen_corpus: Corpus) -> None:  # type: ignore[no-untyped-def]
    case = next(c for c in gen_corpus if c.split == "train" and c.has_mask)
    real = nib.load(case.mask_path)
    content = Path(case.mask_path).read_bytes()
    response = client.post("/api/uploads/mask", content=content, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    upload = response.json()
    assert upload["shape"] == list(real.shape) and upload["labels_present"]
    stored = service.config.uploads_dir / f"{upload['upload_id']}.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(stored).dataobj), np.asarray(real.dataobj))
    status = _finished_job(client, mask={"upload_id": upload["upload_id"]})
    assert status["result"]["mask_source"] == "user"


@pytest.mark.parametrize(
    ("content", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"not a nifti file at all" * 10, 400, "NIfTI"),
        (_mask_bytes(np.full((8, 8, 8), 0.5, np.float32), np.eye(4)), 400, "integer"),
        (_mask_bytes(np.zeros((8, 8, 8), np.uint8), np.eye(4)), 400, "no label"),
        (_mask_bytes(np.ones((8, 8, 1), np.uint8), np.eye(4)), 400, "single slice"),
        (b"\x00" * (3 * 1024 * 1024), 413, "limit"),
    ],
)
def test_bad_uploads_are_refused_and_leave_no_file(  # type: ignore[no-untyped-def]
    client, service, content: bytes, status: int, words: str
) -> None:
    before = set(service.config.uploads_dir.glob("*")) if service.config.uploads_dir.exists() else set()
    response = client.post("/api/uploads/mask", content=content, headers={"content-type": "application/octet-stream"})
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    after = set(service.config.uploads_dir.glob("*")) if service.config.uploads_dir.exists() else set()
    assert after == before


def test_uncompressed_upload_is_stored_gzipped(client, service) -> None:  # type: ignore[no-untyped-def]
    array = np.zeros((10, 10, 10), np.uint8)
    array[2:8, 2:8, 2:8] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    response = client.post("/api/uploads/mask", content=_mask_bytes(array, affine, gz=False))
    assert response.status_code == 201, response.text
    stored = service.config.uploads_dir / f"{response.json()['upload_id']}.nii.gz"
    assert stored.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(np.asarray(nib.load(stored).dataobj), array)


# ---------------------------------------------------------------------------------------------------- security


def test_token_is_required_on_every_api_route_but_not_on_the_page(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(token=TOKEN)
    assert client.get("/").status_code == 200
    for method, path in (("get", "/api/health"), ("post", "/api/search"), ("get", "/api/labels")):
        response = getattr(client, method)(path)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    wrong = client.get("/api/health", headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
    assert wrong.status_code == 401
    basic = client.get("/api/health", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    ok = client.post("/api/search", json={"text": REPORT, "k": 1}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200


def test_foreign_host_header_is_refused_on_loopback(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/api/health", headers={"host": "attacker.example"})
    assert response.status_code == 400
    assert client.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200


def test_internal_errors_are_json_without_traceback(make_client, service, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    app = make_client().app
    monkeypatch.setattr(service, "legend", lambda: 1 / 0)
    response = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False).get("/api/labels")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error; see the service log"}
    assert "Traceback" not in response.text and "ZeroDivision" not in response.text


def test_failed_job_says_why_and_the_worker_keeps_running(client, service, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ctrag.errors import InvalidInputError

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise InvalidInputError("the proxy mask is on another grid")

    monkeypatch.setattr(service, "run_job", broken)
    job_id = client.post("/api/jobs", json={"report": REPORT, **FAST}).json()["job_id"]
    status = wait_for_job(client, job_id)
    assert status["state"] == "failed" and status["error"] == "the proxy mask is on another grid"
    monkeypatch.undo()
    assert _finished_job(client)["state"] == "succeeded"


def test_png_bytes_are_a_real_picture(client) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    status = _finished_job(client)
    image = Image.open(io.BytesIO(client.get(status["result"]["files"]["png"]).content))
    assert image.size[0] > 300 and image.size[1] > 200
