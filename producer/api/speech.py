"""OpenAI-compatible speech: `POST /v1/audio/speech` and `GET /v1/models`.

A speech request is an ordinary job at interactive priority (9), answered in the same HTTP request. The answer
streams: the API opens the job's segment stream before it enqueues the job, and relays each segment as soon as
the worker has synthesized it (shared/audio/streaming.py), so the first bytes leave after the first segment, not after
the whole text. OpenAI's voice names map to stock voices (`OPENAI_VOICES`); any stock or cloned voice id works.
With no live worker for the engine it answers 503 at once. `speed` takes OpenAI's 0.25-4.0; the engine speaks
within its own range and the `X-Voicefarm-Warnings` header says when a speed was clamped. When the client goes
away mid-answer, the job is canceled.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any, Literal, cast

import numpy as np
import soundfile as sf
from flask import Blueprint, Response, g, jsonify, request, stream_with_context
from pydantic import BaseModel, ConfigDict, Field, field_validator

from producer.api.jobs import _job_fields
from producer.auth import authenticate
from producer.errors import error_response
from producer.limits import check_queue_depth
from producer.resources import Farm, farm
from shared.audio.codecs import FORMATS
from shared.audio.streaming import CONTENT_TYPES, SegmentReader, StreamEncoder
from shared.engines import engine_names
from shared.errors import BadRequest, Unavailable
from shared.jobs import dedup
from shared.jobs import state as jobs
from shared.models import Job
from shared.queue import time_limits, try_enqueue
from shared.schemas import Format, JobRequest, clean_text
from shared.text.ssml import looks_like_ssml

log = logging.getLogger(__name__)
bp = Blueprint("speech", __name__, url_prefix="/v1")
INTERACTIVE_PRIORITY = 9
MAX_INPUT_CHARS = 4096
# OpenAI's voice names -> the stock voice each engine speaks them with (kokoro's five stock voices, in turn).
OPENAI_VOICES: dict[str, dict[str, str]] = {
    "kokoro": {
        "alloy": "jf_alpha", "ash": "jm_kumo", "ballad": "jf_gongitsune", "coral": "jf_tebukuro", "echo": "jm_kumo",
        "fable": "jf_nezumi", "nova": "jf_alpha", "onyx": "jm_kumo", "sage": "jf_tebukuro", "shimmer": "jf_nezumi",
        "verse": "jf_gongitsune", "marin": "jf_alpha", "cedar": "jm_kumo",
    },
}  # fmt: skip
# OpenAI's model names take the farm's default engine; an engine's own name picks that engine.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
_POLL_S = 0.5


class SpeechRequest(BaseModel):
    """The body of OpenAI's `audio.speech.create`."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    model: str = Field(min_length=1, max_length=64)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str = Field(min_length=1, max_length=64)
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(default=None, max_length=500)
    stream_format: Literal["audio"] = "audio"

    @field_validator("voice", mode="before")
    @classmethod
    def _voice_id(cls, value: Any) -> Any:
        # Newer clients may send a voice as {"id": ...}.
        return value.get("id") if isinstance(value, dict) else value

    @field_validator("input", "instructions")
    @classmethod
    def _clean(cls, value: str | None) -> str | None:
        return None if value is None else clean_text(value)


@bp.get("/models")
def models() -> Response:
    resources = farm()
    with resources.sessions() as session:
        authenticate(session)
    offered = resources.fleet.offered()
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "voicefarm", "live": name in resources.fleet.live()}
        for name in offered
    ] + [
        {"id": name, "object": "model", "created": 0, "owned_by": "voicefarm", "engine": resources.fleet.default_engine}
        for name in OPENAI_MODELS
    ]
    return jsonify({"object": "list", "data": data})


@bp.post("/audio/speech")
def speech() -> Response | tuple[Response, int]:
    resources = farm()
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    with resources.sessions() as session, session.begin():
        tenant_id = authenticate(session)
        body = SpeechRequest.model_validate(payload)
        req, warnings = _job_request(resources, body)
        fields = _job_fields(resources, session, tenant_id, req)
        if fields["engine"] not in resources.fleet.live():
            # Answered in this request: with no worker to speak it, waiting would only time out.
            raise Unavailable(f"engine {fields['engine']} has no live workers right now", code="no_live_worker")
        fields["cache_key"] = dedup.job_cache_key(session, resources.settings, tenant_id, fields)
        check_queue_depth(session, tenant_id, resources.settings.max_queued_per_tenant)
        job, _ = jobs.create_job(session, tenant_id=tenant_id, idempotency_key=None, api_key_id=g.api_key_id, **fields)
        if resources.settings.dedup_cache:
            dedup.answer(session, resources.storage, job)
    reader = SegmentReader(resources.streams, job.id)
    if job.status == "queued":
        reader.open()  # before the enqueue: the worker publishes only to a stream that exists
        try_enqueue(resources.celery, job.id, job.kind, job.engine, job.priority, len(job.text), resources.sessions)
    answer = _Answer(resources, tenant_id, job, reader, body.response_format)
    failure = answer.wait_first()
    if failure is not None:
        reader.close()
        return failure
    response = Response(stream_with_context(answer.chunks()), mimetype=CONTENT_TYPES[body.response_format])
    response.headers["X-Voicefarm-Job-Id"] = job.id
    if warnings:
        response.headers["X-Voicefarm-Warnings"] = " | ".join(warnings)
    return response


def _job_request(resources: Farm, body: SpeechRequest) -> tuple[JobRequest, list[str]]:
    engine = body.model if body.model in engine_names() else None
    if engine is None and body.model not in OPENAI_MODELS:
        known = ", ".join([*resources.fleet.offered(), *OPENAI_MODELS])
        raise BadRequest(f"unknown model {body.model!r}; this farm serves {known}", code="unknown_model")
    caps = resources.fleet.for_request(engine, body.voice)
    voice = OPENAI_VOICES.get(caps.name, {}).get(body.voice, body.voice)
    low, high = caps.speed_range
    speed = min(max(body.speed, low), high)
    warnings = (
        []
        if speed == body.speed
        else [f"speed {body.speed:g} is outside {caps.name}'s {low:g}-{high:g}; spoke at {speed:g}"]
    )
    req = JobRequest(
        text=body.input,
        # Input that starts with <speak is SSML (shared/text/ssml.py): 400 invalid_ssml when it cannot be read.
        text_format="ssml" if looks_like_ssml(body.input) else "text",
        voice=voice,
        engine=caps.name,
        mode="instruct" if body.instructions else "clone",
        instruct=body.instructions,
        speed=speed,
        # The stored object of the job; the answer itself is encoded as the request asked.
        format=cast(Format, body.response_format if body.response_format in FORMATS else "wav"),
        priority=INTERACTIVE_PRIORITY,
    )
    # Header values are Latin-1: an SSML warning quoting a CJK term keeps it as escapes.
    return req, warnings + [w.encode("ascii", "backslashreplace").decode() for w in req.ssml_warnings()]


class _Answer:
    """Relays one speech job's segments, or its stored object, as one encoded answer."""

    def __init__(self, resources: Farm, tenant_id: str, job: Job, reader: SegmentReader, fmt: str) -> None:
        self.resources, self.tenant_id, self.job_id, self.reader, self.fmt = resources, tenant_id, job.id, reader, fmt
        self.rate = resources.fleet.engine(job.engine).sample_rate if job.engine else 24000
        self.first: list[Any] = []
        self.finished: Job | None = job if job.status in jobs.TERMINAL else None
        self.deadline = time.monotonic() + time_limits("synthesize", len(job.text))[1] + 60

    def _poll_job(self) -> Job | None:
        with self.resources.sessions() as session:
            job = session.get(Job, self.job_id)
            return job if job is not None and job.status in jobs.TERMINAL else None

    def wait_first(self) -> tuple[Response, int] | None:
        """Block until the first segment or the job's end; an error answer when it ended without audio."""
        while not self.first and self.finished is None:
            if time.monotonic() > self.deadline:
                return error_response("timeout", "the job did not produce audio in time", 504, job_id=self.job_id)
            self.first = self.reader.read(int(_POLL_S * 1000))
            if not self.first:
                self.finished = self._poll_job()
        job = self.finished
        if not self.first and job is not None and job.status != "succeeded":
            message = job.error_message or f"the job was {job.status}"
            return error_response(job.error_code or f"job_{job.status}", message, 502, job_id=self.job_id)
        return None

    def chunks(self) -> Iterator[bytes]:
        completed = False
        try:
            if not self.first:  # finished before any segment was relayed: answer from the stored object
                assert self.finished is not None and self.finished.result is not None
                data = self.resources.storage.get(self.finished.result["key"])
                audio, rate = _decode(data, self.finished.format, self.finished.result.get("sample_rate", self.rate))
                yield from StreamEncoder(self.fmt, rate).whole(audio, rate)
                completed = True
                return
            encoder = StreamEncoder(self.fmt, self.first[0].sample_rate)
            yield encoder.header()
            pending = self.first
            while True:
                for segment in pending:
                    yield encoder.encode(segment.audio, segment.sample_rate)
                if self.reader.complete:
                    break
                if time.monotonic() > self.deadline:
                    log.warning("job %s: stream timed out after %d segments", self.job_id, self.reader.next_index)
                    break
                pending = self.reader.read(int(_POLL_S * 1000))
                if not pending and (done := self._poll_job()) is not None and done.status != "succeeded":
                    log.warning("job %s ended %s mid-stream", self.job_id, done.status)
                    break
            yield encoder.finish()
            completed = self.reader.complete
        finally:
            self.reader.close()
            if not completed:  # the client went away (or the job ended badly): do not finish it for nobody
                with contextlib.suppress(Exception), self.resources.sessions() as session, session.begin():
                    jobs.cancel(session, self.tenant_id, self.job_id)


def _decode(data: bytes, fmt: str, rate: int) -> tuple[np.ndarray, int]:
    import io

    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0, rate
    audio, found = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(found)
