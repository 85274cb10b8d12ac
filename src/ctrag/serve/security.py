"""Request checks: the access token, and names that reach the file system (case ids, job ids, file names).

Every name a request puts into a path is matched against a strict pattern *and* looked up in a table the
service owns (the corpus, the job table, a fixed list of file names), so ``..``, encoded slashes (``%2F``,
``%252F``), NUL bytes or absolute paths can never select a file.
"""

from __future__ import annotations

import hmac
import re
import secrets

from ctrag.errors import InvalidInputError

CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Case ids as ``ctrag ingest`` writes them (letters, digits, dot, dash, underscore; no leading dot)."""
JOB_ID = re.compile(r"[A-Za-z0-9_-]{22}")
UPLOAD_ID = JOB_ID

JOB_FILES: dict[str, str] = {
    "ct.nii.gz": "ct.nii.gz",
    "mask.nii.gz": "mask.nii.gz",
    "provenance.json": "ct.provenance.json",
    "preview.png": "ct.png",
}
"""Name in the URL -> file in a job folder. Nothing else in a job folder is served."""


def new_id() -> str:
    """A 128-bit random id (22 URL-safe characters): a job or upload id nobody can guess from another one."""
    return secrets.token_urlsafe(16)


def check_name(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(value) or ".." in value:
        raise InvalidInputError(f"invalid {what} {value[:80]!r}")
    return value


def token_matches(expected: str | None, authorization: str | None) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header (always true without a token)."""
    if expected is None:
        return True
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected.encode("utf-8"))
