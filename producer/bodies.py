"""Pydantic models of the API's response bodies (and the form bodies Flask reads itself), for /openapi.json.

Request bodies that endpoints validate live beside their validation (shared/schemas.py `JobRequest`,
producer/api/speech.py `SpeechRequest`); these describe what the handlers answer. Open models (`extra="allow"`)
where a body carries engine- or job-specific extras.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.batches.lines import LINE_ID


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
    # SSML jobs: each <mark>'s {name, time_s} on the output's timeline.
    marks: list[dict[str, Any]] | None = None
    # The spoken AI notice, when the job has one: {position, text, language, start_s, end_s, slot_s?}.
    disclosure: dict[str, Any] | None = None
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
    # The spoken AI notice (docs/guide/labels.md): the job's own, or its tenant's default when it did not say.
    disclosure: Literal["none", "start", "end"] = "none"
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
    # Consent (docs/guide/consent.md), as the tenant's policy asks: the statement read aloud by the reference's
    # speaker and the statement's id (verified), or the key holder's assertion (attested).
    consent_audio: bytes | None = Field(default=None, json_schema_extra={"format": "binary"})
    consent_id: str | None = None
    consent_attested: bool | None = None


class ConsentStatement(BaseModel):
    """`GET /v1/consent/statement`: a statement for the reference's speaker to read aloud; single use."""

    id: str
    language: Literal["en", "zh", "ja"]
    text: str
    expires_at: str
    policy: Literal["verified", "attested", "off"]


class VerifyForm(BaseModel):
    """multipart/form-data of `POST /v1/verify`."""

    audio: bytes = Field(json_schema_extra={"format": "binary"})
    # Only for raw 16-bit little-endian mono PCM (the farm's `pcm`), which has no container to say its rate.
    format: Literal["pcm"] | None = None
    sample_rate: int | None = Field(default=None, ge=8000, le=192000)


class VerifyLabelJob(BaseModel):
    id: str
    status: str
    created_at: str | None


class VerifyResult(BaseModel):
    """Is the file the farm's: the watermark detector's verdict on its first 60 s; the label and the job it names
    only for the tenant that owns that job."""

    watermarked: bool
    score: float = Field(description="0-1: marked audio scores near 1, other audio near 0; watermarked above 0.5")
    analysed_s: float
    label: dict[str, str] | None = Field(default=None, description="The file's AIGC tag (GB 45438-2025 fields)")
    job: VerifyLabelJob | None = None


class ConsentRecord(_Open):
    """How a voice's consent was given: `verified` (a recording, what Whisper heard, the scores) or `attested`."""

    method: Literal["verified", "attested"]
    status: Literal["pending", "verified", "refused", "attested"]
    key: str | None
    at: str | None


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
    consent: ConsentRecord | None = None


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


class BatchLineFields(BaseModel):
    """A batch line's job fields (shared/batches/lines.py `LINE_FIELDS`, text aside): any of them, each as in a
    job request (`JobRequest`); a line's own value wins over the batch's `defaults`. Left open here: the batch
    handler validates every line itself and lists every problem at once (422 `invalid_lines`)."""

    voice: Any = None
    mode: Any = None
    instruct: Any = None
    language: Any = None
    speed: Any = None
    seed: Any = None
    format: Any = None
    sample_rate: Any = None
    engine: Any = None
    text_format: Any = None
    loudness: Any = None
    trim_silence_s: Any = None
    target_duration_s: Any = None
    channels: Any = None
    words: Any = None
    lexicon: Any = None
    qa: Any = None
    disclosure: Any = None


class BatchLine(BatchLineFields):
    """One line of a batch (or the changed fields of a re-rendered line): its text, an optional id (the line
    number zero-padded when absent) and any job fields."""

    id: str | None = Field(default=None, pattern=LINE_ID.pattern)
    text: str


class BatchRequest(BaseModel):
    """`POST /v1/batches` as JSON: up to `max_batch_lines` lines, and defaults for the fields a line leaves out."""

    lines: list[BatchLine]
    defaults: BatchLineFields | None = None
    name: str | None = Field(default=None, max_length=200)
    webhook_url: str | None = Field(default=None, max_length=2000)


class BatchUpload(BaseModel):
    """multipart/form-data of `POST /v1/batches`: the lines as a CSV file (a header row naming the fields) or a
    JSONL file (a `.jsonl` or `.ndjson` name)."""

    file: bytes = Field(json_schema_extra={"format": "binary"})


class ReviewCounts(BaseModel):
    """A batch's flagged lines (the QA gate's needs_review, current takes) and the decisions on them."""

    flagged: int
    pending: int
    approved: int
    rejected: int


class BatchWebhook(BaseModel):
    event: str | None
    attempts: int
    delivered_at: str | None
    error: str | None
    gave_up_at: str | None


class BatchView(_Open):
    """A batch: counts of its current lines by status, progress, audio seconds and an ETA."""

    id: str
    name: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    done: bool
    lines: int
    counts: dict[str, int]
    progress: float
    audio_seconds: float
    lines_per_second: float | None
    eta_s: float | None
    defaults: dict[str, Any]
    webhook_url: str | None
    created_at: str | None
    canceled_at: str | None
    finished_at: str | None
    webhook: BatchWebhook | None = None
    # Lines the QA gate flagged that wait for a person's decision, and the decisions so far.
    pending_reviews: int = 0
    reviews: ReviewCounts | None = None


class BatchCanceled(BatchView):
    # How many queued lines this request canceled; running lines finish first.
    canceled_now: int


class BatchList(BaseModel):
    batches: list[BatchView]
    next_cursor: str | None


class ManifestLine(BaseModel):
    """A line's current take (shared/batches/service.py `manifest_rows`)."""

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
    qa: Literal["passed", "needs_review"] | None
    qa_takes: int | None  # how many takes the QA gate checked
    # A person's decision on a flagged line (POST /v1/batches/{id}/lines/{line_id}/review); null when none.
    review: Literal["approved", "rejected"] | None = None


class Manifest(BaseModel):
    batch_id: str
    lines: list[ManifestLine]


class BatchTake(JobView):
    """A re-rendered line's new take: its job, and where it stands in the batch."""

    batch_id: str
    line_id: str
    take: int


class ReviewDecision(BaseModel):
    """`POST /v1/batches/{id}/lines/{line_id}/review`: a decision on a line the QA gate flagged."""

    decision: Literal["approved", "rejected"]
    note: str | None = Field(default=None, max_length=2000)


class ReviewBy(BaseModel):
    key_id: str | None
    label: str | None


class LineDecision(BaseModel):
    decision: Literal["approved", "rejected"]
    note: str | None
    by: ReviewBy
    at: str | None


class ReviewLine(BaseModel):
    """A line as the review queue shows it (shared/batches/review.py `line_view`): the script, the normalised
    text that was spoken, what the recogniser heard, the kept take's checks (`{value, threshold, bound, pass}`),
    its takes, where to hear it (a presigned URL, or the job's audio path with the API key) and the decision."""

    line_id: str
    line_no: int | None
    job_id: str
    take: int  # the line's take: a re-render makes the next one
    status: str
    text: str
    normalized_text: str | None
    heard: str | None
    language: str
    voice: str
    seed: int | None
    speed: float
    qa: Literal["passed", "needs_review"] | None
    qa_takes: int | None  # how many takes the QA gate checked for this one
    kept_take: int | None
    checks: dict[str, dict[str, Any]]
    failed_checks: list[str]
    history: list[dict[str, Any]]
    duration_s: float | None
    format: str
    audio_url: str | None
    audio_path: str | None
    review: LineDecision | None


class ReviewQueue(BaseModel):
    batch_id: str
    name: str
    reviews: ReviewCounts
    lines: list[ReviewLine]


class BatchDeliveries(BaseModel):
    batch_id: str
    deliveries: list[dict[str, Any]]
