"""OpenAI-compatible speech: `POST /v1/audio/speech` and `GET /v1/models`.

A speech request is an ordinary job at interactive priority (9, or the tenant's highest if lower), answered in the
same HTTP request. The answer streams: the API opens the job's segment stream before it enqueues the job, and relays
each segment as soon as the worker has synthesized it (shared/audio/streaming.py), so the first bytes leave after
the first segment, not after the whole text. The job asks for the streaming split (`options["split"] = "growing"`,
shared/text/split.py): its first segment is the first sentence (or its leading clauses), and each later one at most
twice the one before. OpenAI's voice names map to stock voices (`OPENAI_VOICES`); any stock or cloned voice id
works. An engine on offer whose first worker is still loading is waited for like a busy one. `speed` takes OpenAI's
0.25-4.0; the engine speaks within its own range and the `X-Voicefarm-Warnings` header says when a speed was
clamped.

A waiting request holds a gunicorn thread, so streams are admitted (producer/limits.py `StreamSlots`) before the
body is read: at most `api_threads - api_reserved_threads` open in one API process (503 `server_busy`), so the
reserved threads always answer health checks and everyone else, and `max_streams_per_tenant` open per tenant
(429 `too_many_streams`). A job no worker starts within `speech_start_wait_s` is canceled (503 `workers_busy`), and
so is the job of a client that leaves, while it waits (its socket is polled) or mid-answer.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal, cast

import numpy as np
import soundfile as sf
from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context
from pydantic import BaseModel, ConfigDict, Field, field_validator

from producer.api.jobs import _job_fields
from producer.auth import authenticate
from producer.errors import error_response
from producer.limits import StreamSlot, StreamSlots, check_queue_depth
from producer.resources import Farm, farm
from shared import admission
from shared.audio.codecs import FORMATS
from shared.audio.streaming import CONTENT_TYPES, SegmentReader, StreamEncoder
from shared.engines import engine_names
from shared.errors import BadRequest
from shared.jobs import dedup
from shared.jobs import state as jobs
from shared.models import Job
from shared.queue import time_limits, try_enqueue
from shared.schemas import Format, JobRequest, clean_text
from shared.text.split import GROWING, SPLIT_OPTION
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
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer closed its side


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
    with resources.sessions() as session:
        tenant_id = authenticate(session)
    # Admitted before the body is read: one of this process's stream threads, one of the tenant's streams.
    slot = _slots(resources).acquire(tenant_id)
    answer: _Answer | None = None
    try:
        payload = request.get_json(silent=True)  # at most 64 KiB (producer/intake.py), its nesting checked
        if not isinstance(payload, dict):
            raise BadRequest("the body must be a JSON object", code="invalid_json")
        body = SpeechRequest.model_validate(payload)
        req, warnings = _job_request(resources, body)
        with resources.sessions() as session, session.begin():
            # Interactive priority (9) for a tenant entitled to it; others send at their own highest.
            req = req.model_copy(update={"priority": admission.entitled_priority(session, tenant_id, req.priority)})
            fields = _job_fields(resources, session, tenant_id, req)
            # An engine on offer with no live worker yet (the first one still loading its model) is waited for,
            # like a busy one, within speech_start_wait_s; an engine not on offer was refused above.

            # The answer streams: the segments start short and grow (shared/text/split.py), so the first audio
            # leaves soon. It shapes the audio, so it is part of the job's options and of its dedup key.
            fields["options"] = (fields.get("options") or {}) | {SPLIT_OPTION: GROWING}
            fields["cache_key"] = dedup.job_cache_key(session, resources.settings, tenant_id, fields)
            check_queue_depth(session, tenant_id, resources.settings.max_queued_per_tenant)
            job, _ = jobs.create_job(
                session, tenant_id=tenant_id, idempotency_key=None, api_key_id=g.api_key_id, **fields
            )
            if resources.settings.dedup_cache:
                dedup.answer(session, resources.storage, job)
        reader = SegmentReader(resources.streams, job.id)
        answer = _Answer(resources, tenant_id, job, reader, body.response_format, slot, _client_socket())
        if job.status == "queued":
            reader.open()  # before the enqueue: the worker publishes only to a stream that exists
            try_enqueue(resources.celery, job.id, job.kind, job.engine, job.priority, len(job.text), resources.sessions)
        failure = answer.wait_first()
        if failure is not None:
            answer.close()
            return failure
        response = Response(stream_with_context(answer.chunks()), mimetype=CONTENT_TYPES[body.response_format])
        # Called by the server when the answer ends, is cut off, or is never iterated at all.
        response.call_on_close(answer.close)
    except BaseException:
        if answer is not None:
            answer.close()
        else:
            slot.release()
        raise
    response.headers["X-Voicefarm-Job-Id"] = job.id
    if warnings:
        response.headers["X-Voicefarm-Warnings"] = " | ".join(warnings)
    return response


_SLOTS_LOCK = threading.Lock()


def _slots(resources: Farm) -> StreamSlots:
    """This API process's stream slots (producer/limits.py), made on first use."""
    with _SLOTS_LOCK:
        slots = current_app.extensions.get("voicefarm.stream_slots")
        if slots is None:
            slots = StreamSlots.for_settings(resources.streams, resources.settings)
            current_app.extensions["voicefarm.stream_slots"] = slots
        return cast(StreamSlots, slots)


def _client_socket() -> socket.socket | None:
    """The client's connection, where the server hands it over (gunicorn does): watched for a client that left."""
    sock = request.environ.get("gunicorn.socket")
    return sock if isinstance(sock, socket.socket) else None


def client_gone(sock: socket.socket | None) -> bool:
    """Whether the client closed its connection (or it broke). Never blocks and never consumes a byte: the socket
    is polled, and when it is readable one byte is peeked (b"" is the end). Unknown (no socket, TLS) is False."""
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | _POLLRDHUP)
        events = poller.poll(0)
    except (OSError, ValueError):
        return False
    if not events:
        return False
    if events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL | _POLLRDHUP):
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError, ValueError):  # ValueError: a TLS socket cannot peek
        return False
    except OSError:
        return True


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
        # Input that starts with <speak is SSML (shared/text/ssml/): 400 invalid_ssml when it cannot be read.
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
    """Relays one speech job's segments, or its stored object, as one encoded answer. It holds the request's stream
    slot until `close`, which also cancels the job unless its audio was delivered or it ended by itself."""

    def __init__(
        self,
        resources: Farm,
        tenant_id: str,
        job: Job,
        reader: SegmentReader,
        fmt: str,
        slot: StreamSlot,
        sock: socket.socket | None,
    ) -> None:
        self.resources, self.tenant_id, self.job_id, self.reader, self.fmt = resources, tenant_id, job.id, reader, fmt
        self.slot, self.sock = slot, sock
        self.rate = resources.fleet.engine(job.engine).sample_rate if job.engine else 24000
        self.first: list[Any] = []
        self.finished: Job | None = job if job.status in jobs.TERMINAL else None
        self.started = job.status != "queued"
        now = time.monotonic()
        self.start_by = now + resources.settings.speech_start_wait_s
        self.deadline = now + time_limits("synthesize", len(job.text))[1] + 60
        self.delivered = False
        self._closed = False
        self._close_lock = threading.Lock()

    def _poll_job(self) -> Job | None:
        """The job when it has ended; notes whether a worker has started it."""
        with self.resources.sessions() as session:
            job = session.get(Job, self.job_id)
            if job is not None and job.status != "queued":
                self.started = True
            return job if job is not None and job.status in jobs.TERMINAL else None

    def wait_first(self) -> tuple[Response, int] | None:
        """Block until the first segment or the job's end; an error answer when it ended without audio, when no
        worker started it within `speech_start_wait_s`, or when the client left (the caller's `close` cancels)."""
        while not self.first and self.finished is None:
            now = time.monotonic()
            if client_gone(self.sock):
                log.info("job %s: the client left while it waited; canceling", self.job_id)
                return error_response("client_closed_request", "the client closed the connection", 499)
            if not self.started and now > self.start_by:
                wait_s = self.resources.settings.speech_start_wait_s
                response, status = error_response(
                    "workers_busy",
                    f"no worker started the job within {wait_s:g} s; it was canceled, retry later",
                    503,
                    job_id=self.job_id,
                )
                response.headers["Retry-After"] = "5"
                return response, status
            if now > self.deadline:
                return error_response("timeout", "the job did not produce audio in time", 504, job_id=self.job_id)
            self.slot.renew()
            self.first = self.reader.read(int(_POLL_S * 1000))
            if not self.first:
                self.finished = self._poll_job()
        job = self.finished
        if not self.first and job is not None and job.status != "succeeded":
            message = job.error_message or f"the job was {job.status}"
            return error_response(job.error_code or f"job_{job.status}", message, 502, job_id=self.job_id)
        return None

    def chunks(self) -> Iterator[bytes]:
        if not self.first:  # finished before any segment was relayed: answer from the stored object
            assert self.finished is not None and self.finished.result is not None
            data = self.resources.storage.get(self.finished.result["key"])
            audio, rate = _decode(data, self.finished.format, self.finished.result.get("sample_rate", self.rate))
            yield from StreamEncoder(self.fmt, rate).whole(audio, rate)
            self.delivered = True
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
            self.slot.renew()
            pending = self.reader.read(int(_POLL_S * 1000))
            if not pending and client_gone(self.sock):
                log.info("job %s: the client left mid-stream; canceling", self.job_id)
                return
            if not pending and (done := self._poll_job()) is not None and done.status != "succeeded":
                log.warning("job %s ended %s mid-stream", self.job_id, done.status)
                break
        yield encoder.finish()
        self.delivered = self.reader.complete

    def close(self) -> None:
        """End the answer: drop the segment stream, cancel the job unless its audio was delivered or it ended (a
        client that went away is not worth finishing it for), and free the stream slot. Safe to call twice, and
        from the server after the request has ended."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            with contextlib.suppress(Exception):
                self.reader.close()
            if not self.delivered and self.finished is None:
                with contextlib.suppress(Exception), self.resources.sessions() as session, session.begin():
                    jobs.cancel(session, self.tenant_id, self.job_id)
        finally:
            self.slot.release()


def _decode(data: bytes, fmt: str, rate: int) -> tuple[np.ndarray, int]:
    import io

    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0, rate
    audio, found = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(found)
