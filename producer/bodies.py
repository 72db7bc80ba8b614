"""Pydantic models of the API's response bodies (and the form bodies Flask reads itself), for /openapi.json.

Request bodies that endpoints validate live beside their validation (shared/schemas.py `JobRequest`,
producer/api/speech.py `SpeechRequest`); these describe what the handlers answer. Open models (`extra="allow"`)
where a body carries engine- or job-specific extras.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Open):
    code: str
    message: str


class Error(BaseModel):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class JobResult(_Open):
    url: str | None = None
    format: str | None = None
    sample_rate: int | None = None
    duration_s: float | None = None
    bytes: int | None = None
    sha256: str | None = None
    segments: list[dict[str, Any]] = []
    warnings: list[str] = []
    similarity: float | None = None
    # "held_out" (speech of the reference the voice was not fitted to), "second_clip" (the clone's second clip)
    # or "fitting_clip" (the very clip it was fitted to: an upper bound).
    similarity_basis: str | None = None
    engine: str | None = None
    rtf: float | None = None
    channels: int | None = None
    # What was spoken: the script after text normalisation (numbers, dates, units ... as words).
    normalized_text: str | None = None
    # Measured integrated loudness (LUFS) and true peak (dBTP) of the output, when a target was asked for.
    loudness: dict[str, Any] | None = None
    # Word (zh/ja: character) start and end times, with `words: true`; `words_source` is "engine" or "alignment".
    words: list[dict[str, Any]] | None = None
    words_source: str | None = None
    # The QA gate's verdict, takes and checks (batch lines by default; jobs with `qa`).
    qa: dict[str, Any] | None = None
    # Answered from the dedup cache: the job whose stored audio was copied.
    cached: bool | None = None
    cached_from: str | None = None


class JobView(_Open):
    id: str
    kind: Literal["synthesize", "clone"]
    # "checking": a take is stored and waits for the QA gate (shared/qa.py).
    status: Literal["queued", "running", "checking", "succeeded", "failed", "canceled"]
    engine: str
    progress: float
    attempts: int
    text: str
    voice: str
    mode: str
    instruct: str | None
    language: str
    speed: float
    format: str
    priority: int
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error: ErrorDetail | None = None
    result: JobResult | None = None


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None


class CloneForm(BaseModel):
    """multipart/form-data of `POST /v1/voices`."""

    audio: bytes = Field(json_schema_extra={"format": "binary"})
    # Another clip of the speaker, never fitted to: what every output's similarity is measured against.
    second_clip: bytes | None = Field(default=None, json_schema_extra={"format": "binary"})
    transcript: str | None = Field(default=None, max_length=1000)
    name: str | None = Field(default=None, max_length=200)
    language: str | None = None
    engine: str | None = None


class VoiceView(_Open):
    id: str
    kind: Literal["cloned"]
    name: str
    status: Literal["pending", "ready", "failed"]
    engine: str
    language: str | None
    transcript: str | None
    duration_s: float | None
    created_at: str | None
    ready_at: str | None
    job_id: str | None = None
    warnings: list[str] = []
    second_clip_s: float | None = None


class StockVoice(BaseModel):
    id: str
    engine: str
    kind: Literal["stock"]
    default_for: list[str]


class VoiceList(BaseModel):
    stock: list[StockVoice]
    voices: list[VoiceView]


class Instruction(BaseModel):
    id: str
    label: str
    text: str
    kind: str


class EngineInstructions(BaseModel):
    honoured: list[Instruction]
    free_form: str
    live: bool


class Instructions(BaseModel):
    engines: dict[str, EngineInstructions]


class WorkerView(BaseModel):
    name: str
    engine: str
    model: str
    device: str
    languages: list[str]
    modes: list[str]
    started_at: str
    last_seen: str
    jobs_done: int
    audio_seconds: float
    mean_rtf: float | None


class WorkerList(BaseModel):
    workers: list[WorkerView]


class Model(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
    # What an operator should look at but that does not stop the API serving (e.g. takes waiting for a QA pool).
    warnings: list[str] = []


class WebhookSecret(_Open):
    key_id: str
    secret: str


class Deliveries(BaseModel):
    job_id: str
    deliveries: list[dict[str, Any]]
