"""A typed Python client for the voicefarm API.

    from voicefarm.client import Client
    client = Client.from_env()              # VOICEFARM_API_URL, VOICEFARM_API_KEY or $VOICEFARM_DATA_DIR/api_key
    job = client.wait_job(client.submit_job("Hello there.", voice="af_heart", seed=7)["id"])
    client.download(job, "hello.wav")

Requests that the farm answers 429 (rate limited, queue full) or 503 (a dependency down) are retried with
urllib3's `Retry`, honouring the Retry-After header, as are connections that could not be made. Every POST
that creates something carries an Idempotency-Key, so a retry never creates it twice. Errors raise `ApiError`
with the API's code and message.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared.config import client_settings

TERMINAL = ("succeeded", "failed", "canceled")


class Result(TypedDict, total=False):
    url: str
    format: str
    sample_rate: int
    duration_s: float
    bytes: int
    sha256: str
    cached: bool
    similarity: float | None
    warnings: list[str]


class JobView(TypedDict, total=False):
    id: str
    kind: str
    status: str
    progress: float
    attempts: int
    text: str
    voice: str
    format: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: dict[str, str]
    result: Result


class BatchView(TypedDict, total=False):
    id: str
    name: str
    status: str
    done: bool
    lines: int
    counts: dict[str, int]
    progress: float
    audio_seconds: float
    lines_per_second: float | None
    eta_s: float | None
    # Lines the QA gate flagged that wait for a person's decision, and {flagged, pending, approved, rejected}.
    pending_reviews: int
    reviews: dict[str, int]


class ManifestLine(TypedDict, total=False):
    line_id: str
    job_id: str
    take: int
    status: str
    file: str | None
    url: str | None
    format: str
    duration_s: float | None
    sha256: str | None
    attempts: int
    cached: bool
    error_code: str | None
    error_message: str | None
    qa: str | None  # "passed" or "needs_review"
    qa_takes: int | None
    review: str | None  # "approved", "rejected", or None


class ApiError(Exception):
    """The API answered an error: `status` (HTTP), `code` and `message` from its JSON error body."""

    def __init__(self, status: int, code: str, message: str, body: Any = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body


def find_key(data_dir: str | os.PathLike[str] | None = None) -> str:
    """VOICEFARM_API_KEY, else the key file `voicefarm up` writes: $VOICEFARM_DATA_DIR/api_key (default var/)."""
    env = client_settings()
    key = env.api_key.strip()
    if key:
        return key
    path = Path(data_dir or env.data_path) / "api_key"
    try:
        return path.read_text().strip()
    except OSError:
        raise ApiError(0, "missing_api_key", f"set VOICEFARM_API_KEY or create {path}") from None


def retrying_session(retries: int = 6, backoff_s: float = 0.5) -> requests.Session:
    session = requests.Session()
    retry = Retry(
        total=retries,
        connect=retries,
        read=2,
        status=retries,
        status_forcelist=(429, 503),
        allowed_methods=None,  # POSTs too: every creating POST carries an Idempotency-Key
        backoff_factor=backoff_s,
        backoff_max=30,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Client:
    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 30.0, retries: int = 6):
        self.url = (url or client_settings().url).rstrip("/")
        self.key = key if key is not None else find_key()
        self.timeout = timeout
        self.http = retrying_session(retries)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        return cls(**kwargs)

    # plumbing

    def request(self, method: str, path: str, *, idempotency_key: str | None = None, **kwargs: Any) -> Any:
        """Call the API; the decoded JSON answer, or `ApiError`."""
        response = self.raw(method, path, idempotency_key=idempotency_key, **kwargs)
        return response.json() if response.content else None

    def raw(self, method: str, path: str, *, idempotency_key: str | None = None, **kwargs: Any) -> requests.Response:
        # The key goes to the API only, never to the storage a presigned URL names.
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        response = self.http.request(method, self.url + path, headers=headers, timeout=self.timeout, **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        return response

    # voices

    def create_voice(
        self,
        audio: str | os.PathLike[str],
        *,
        transcript: str | None = None,
        name: str = "",
        language: str | None = None,
        consent_audio: str | os.PathLike[str] | None = None,
        consent_id: str | None = None,
        consent_attested: bool = False,
    ) -> dict[str, Any]:
        """Clone a voice. The tenant's consent policy decides what goes with it: a recording of the statement
        `consent_id` names (`consent_statement()`), or `consent_attested=True` (docs/guide/consent.md)."""
        fields = {"transcript": transcript, "name": name, "language": language, "consent_id": consent_id}
        form = {k: v for k, v in fields.items() if v}
        if consent_attested:
            form["consent_attested"] = "true"
        files = {"audio": (Path(audio).name, Path(audio).read_bytes())}
        if consent_audio is not None:
            files["consent_audio"] = (Path(consent_audio).name, Path(consent_audio).read_bytes())
        return dict(self.request("POST", "/v1/voices", data=form, files=files))

    def verify(self, audio: str | os.PathLike[str], *, pcm_rate: int | None = None) -> dict[str, Any]:
        """Does the file carry the farm's watermark: {watermarked, score, analysed_s}, and its label and job when
        this key's tenant made it (`POST /v1/verify`). Raw 16-bit PCM needs `pcm_rate`."""
        form = {"format": "pcm", "sample_rate": str(pcm_rate)} if pcm_rate else {}
        files = {"audio": (Path(audio).name, Path(audio).read_bytes())}
        return dict(self.request("POST", "/v1/verify", data=form, files=files))

    def consent_statement(self, language: str = "en") -> dict[str, Any]:
        """A consent statement for the reference's speaker to read aloud: {id, text, expires_at}."""
        return dict(self.request("GET", "/v1/consent/statement", params={"language": language}))

    def get_voice(self, voice_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/v1/voices/{voice_id}"))

    def list_voices(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/voices"))

    def wait_voice(self, voice_id: str, timeout: float = 600, poll_s: float = 1.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            voice = self.get_voice(voice_id)
            if voice.get("status") in ("ready", "failed") or time.monotonic() > deadline:
                return voice
            time.sleep(poll_s)

    # jobs

    def submit_job(self, text: str, *, idempotency_key: str | None = None, **options: Any) -> JobView:
        body = {"text": text, **{k: v for k, v in options.items() if v is not None}}
        key = idempotency_key or f"client-{uuid.uuid4().hex}"
        view: JobView = self.request("POST", "/v1/jobs", json=body, idempotency_key=key)
        return view

    def get_job(self, job_id: str) -> JobView:
        view: JobView = self.request("GET", f"/v1/jobs/{job_id}")
        return view

    def list_jobs(self, *, status: str | None = None, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v is not None}
        return dict(self.request("GET", "/v1/jobs", params=params))

    def cancel_job(self, job_id: str) -> JobView:
        view: JobView = self.request("POST", f"/v1/jobs/{job_id}/cancel")
        return view

    def wait_job(self, job_id: str, timeout: float = 600, poll_s: float = 0.5) -> JobView:
        """Poll until the job is terminal (or the timeout passes: the last view is returned)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job.get("status") in TERMINAL or time.monotonic() > deadline:
                return job
            time.sleep(poll_s)

    def download(self, job: JobView | ManifestLine, path: str | os.PathLike[str]) -> str:
        """Fetch a succeeded job's audio (or a manifest line's) to `path`, written whole or not at all; checks
        the sha256 the farm recorded. Returns it."""
        # A job view keeps its URL and sha256 under "result"; a manifest line has them at the top.
        result: Mapping[str, Any] = job["result"] if "result" in job else job  # type: ignore[typeddict-item]
        url, want = result.get("url"), result.get("sha256")
        if not url:
            raise ApiError(0, "no_audio", "the job has no audio to download")
        target = Path(path)
        partial = target.with_name(f".{target.name}.part")
        digest = hashlib.sha256()
        with self.http.get(str(url), stream=True, timeout=self.timeout) as response:
            if response.status_code >= 400:
                raise ApiError(response.status_code, "download_failed", f"storage answered {response.status_code}")
            with partial.open("wb") as fh:
                for chunk in response.iter_content(64 * 1024):
                    digest.update(chunk)
                    fh.write(chunk)
        if want and digest.hexdigest() != want:
            partial.unlink(missing_ok=True)
            raise ApiError(0, "checksum_mismatch", f"{target.name}: sha256 differs from the farm's record")
        partial.replace(target)
        return digest.hexdigest()

    # batches

    def create_batch(
        self,
        lines: Iterable[Mapping[str, Any]] | None = None,
        *,
        file: str | os.PathLike[str] | None = None,
        defaults: Mapping[str, Any] | None = None,
        name: str = "",
        idempotency_key: str | None = None,
    ) -> BatchView:
        """Submit lines as JSON, or a CSV/JSONL `file` as an upload (its defaults as form fields)."""
        key = idempotency_key or f"client-{uuid.uuid4().hex}"
        clean = {k: v for k, v in (defaults or {}).items() if v is not None}
        if file is not None:
            form = {k: str(v) for k, v in clean.items()} | ({"name": name} if name else {})
            with open(file, "rb") as fh:
                files = {"file": (Path(file).name, fh.read())}
            view: BatchView = self.request("POST", "/v1/batches", data=form, files=files, idempotency_key=key)
            return view
        body = {"lines": list(lines or []), "defaults": clean, "name": name}
        view = self.request("POST", "/v1/batches", json=body, idempotency_key=key)
        return view

    def get_batch(self, batch_id: str) -> BatchView:
        view: BatchView = self.request("GET", f"/v1/batches/{batch_id}")
        return view

    def list_batches(self, *, limit: int = 50) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/batches", params={"limit": limit}))

    def manifest(self, batch_id: str) -> list[ManifestLine]:
        lines: list[ManifestLine] = self.request("GET", f"/v1/batches/{batch_id}/manifest")["lines"]
        return lines

    def cancel_batch(self, batch_id: str) -> BatchView:
        view: BatchView = self.request("POST", f"/v1/batches/{batch_id}/cancel")
        return view

    def rerender_line(self, batch_id: str, line_id: str, **changes: Any) -> JobView:
        view: JobView = self.request("POST", f"/v1/batches/{batch_id}/lines/{line_id}", json=changes)
        return view

    def review_queue(self, batch_id: str, *, every_line: bool = False) -> list[dict[str, Any]]:
        """The lines the QA gate flagged that wait for a decision (`every_line`: every current line)."""
        params = {"all": "true"} if every_line else {}
        lines: list[dict[str, Any]] = self.request("GET", f"/v1/batches/{batch_id}/review", params=params)["lines"]
        return lines

    def review_line(self, batch_id: str, line_id: str, decision: str, note: str | None = None) -> dict[str, Any]:
        """Approve or reject a flagged line's current take ("approved" or "rejected")."""
        body = {"decision": decision} | ({"note": note} if note else {})
        return dict(self.request("POST", f"/v1/batches/{batch_id}/lines/{line_id}/review", json=body))

    def download_archive(self, batch_id: str, path: str | os.PathLike[str]) -> int:
        """Stream the batch's zip to `path`; returns its size in bytes."""
        size = 0
        response = self.raw("GET", f"/v1/batches/{batch_id}/archive", stream=True)
        with response, open(path, "wb") as fh:
            for chunk in response.iter_content(256 * 1024):
                fh.write(chunk)
                size += len(chunk)
        return size

    # the farm

    def ready(self) -> dict[str, Any]:
        """GET /readyz, whatever its status (503 says which dependency is down)."""
        response = self.http.get(self.url + "/readyz", timeout=self.timeout)
        return dict(response.json()) | {"http_status": response.status_code}

    def workers(self) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/workers"))


def _error(response: requests.Response) -> ApiError:
    try:
        body = response.json()
        error = body.get("error") or {}
        return ApiError(response.status_code, str(error.get("code", "error")), str(error.get("message", "")), body)
    except ValueError:
        return ApiError(response.status_code, "http_error", response.text[:200])
