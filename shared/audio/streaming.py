"""Segment streams: how audio reaches a streaming request while its job is still being synthesized.

A request that streams (`POST /v1/audio/speech`) opens a Redis stream keyed by its job id before it enqueues the
job. The worker, after synthesizing each segment, appends it to that stream when the stream exists (one EXISTS per
segment; jobs nobody streams cost nothing more) as 16-bit PCM with its index, the segment count, the attempt and
the sample rate. The API relays segments in index order through a `StreamEncoder`, so the first bytes leave as
soon as the first segment is synthesized. The job row stays the source of truth: the final object is stored as
for any job, and a request whose job finished without segments (a dedup hit, a worker that lost its stream) is
answered from that object. A second attempt after a worker died publishes again from segment 0; the relay takes
each index once, from whichever attempt delivers it first.

A streamed job's segments start short and grow (shared/text/split.py, `options["split"] = "growing"`), so the first
segment is ready soon. The worker fades each of them in and out over a few milliseconds (shared/audio/codecs.py
`fade_edges`) before it publishes and stores it, and the encoder puts the pause between segments that
`join_segments` puts in the stored object: the stream is the stored audio without clicks at the seams. Each
segment carries the watermark (shared/provenance/watermark.py), put in by the worker as it publishes the segment;
the stored object is marked as a whole, so the two differ in the mark's low bits only.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from shared.audio.codecs import resample

log = logging.getLogger(__name__)
STREAM_TTL_S = 900
SEGMENT_PAUSE_S = 0.25  # the same pause the worker puts between segments of the stored object
# OpenAI's speech formats -> (PyAV muxer, codec, sample rate or None for the engine's); wav and pcm are written here.
_AV_FORMATS: dict[str, tuple[str, str, int | None]] = {
    "mp3": ("mp3", "libmp3lame", None),
    "aac": ("adts", "aac", None),
    "opus": ("ogg", "libopus", 48000),
    "flac": ("flac", "flac", None),
}
STREAM_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
PCM_RATE = 24000  # OpenAI's pcm is 24 kHz signed 16-bit little-endian mono


def stream_key(job_id: str) -> str:
    return f"voicefarm:segments:{job_id}"


@dataclass(frozen=True)
class Segment:
    attempt: int
    index: int
    count: int
    sample_rate: int
    audio: np.ndarray  # float32 mono


class SegmentPublisher:
    """The worker's side: append each segment of a streamed job to its stream. Best effort: the stored object is
    what the job promises, so a Redis error here is logged and the job goes on."""

    def __init__(self, broker_url: str, mark: Callable[[np.ndarray, int], np.ndarray] | None = None) -> None:
        self._redis = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=2)
        # The watermark (shared/provenance/watermark.py `embed`), put into each segment before it leaves.
        self._mark = mark

    def publish(self, job_id: str, attempt: int, index: int, count: int, audio: np.ndarray, rate: int) -> None:
        key = stream_key(job_id)
        try:
            if not self._redis.exists(key):
                return
            if self._mark is not None:
                audio = self._mark(audio, rate)
            pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
            fields: dict[Any, Any] = {"attempt": attempt, "index": index, "count": count, "rate": rate, "pcm": pcm}
            pipe = self._redis.pipeline()
            pipe.xadd(key, fields)
            pipe.expire(key, STREAM_TTL_S)
            pipe.execute()
        except redis.RedisError:
            log.warning("job %s: segment %d not streamed (broker unavailable)", job_id, index, exc_info=True)

    def close(self) -> None:
        self._redis.close()


class SegmentReader:
    """The API's side: open a job's stream before the job is enqueued, then read its segments in order."""

    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self._redis, self.key = client, stream_key(job_id)
        self._last = "0-0"
        self.next_index = 0
        self.count: int | None = None

    def open(self) -> None:
        pipe = self._redis.pipeline()
        pipe.xadd(self.key, {"open": 1})
        pipe.expire(self.key, STREAM_TTL_S)
        pipe.execute()

    def read(self, block_ms: int) -> list[Segment]:
        """The next segments in index order (possibly none after `block_ms`)."""
        answer: Any = self._redis.xread({self.key: self._last}, block=block_ms, count=64)
        found: list[Segment] = []
        for _key, entries in answer or []:
            for entry_id, fields in entries:
                self._last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                if b"pcm" not in fields or int(fields[b"index"]) != self.next_index:
                    continue  # the opening entry, or a segment an earlier attempt already delivered
                pcm = np.frombuffer(fields[b"pcm"], dtype="<i2").astype(np.float32) / 32767.0
                found.append(
                    Segment(int(fields[b"attempt"]), self.next_index, int(fields[b"count"]), int(fields[b"rate"]), pcm)
                )
                self.count = int(fields[b"count"])
                self.next_index += 1
        return found

    @property
    def complete(self) -> bool:
        return self.count is not None and self.next_index >= self.count

    def close(self) -> None:
        self._redis.delete(self.key)


class _Sink(io.RawIOBase):
    """A write-only file for PyAV whose bytes are taken out after every encode."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buf += data
        return len(data)

    def take(self) -> bytes:
        out, self.buf = bytes(self.buf), bytearray()
        return out


class StreamEncoder:
    """One continuous encoding of a response in an OpenAI speech format, fed segment by segment."""

    def __init__(self, fmt: str, source_rate: int) -> None:
        if fmt not in STREAM_FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt, self.source_rate = fmt, source_rate
        self._segments = 0
        self._container: Any = None
        if fmt in _AV_FORMATS:
            import av  # FFmpeg's encoders; imported here so nothing else pays for it

            muxer, codec, rate = _AV_FORMATS[fmt]
            self.rate = rate or source_rate
            self._sink = _Sink()
            self._container = av.open(self._sink, mode="w", format=muxer)
            self._stream = self._container.add_stream(codec, rate=self.rate, layout="mono")
        else:
            self.rate = PCM_RATE if fmt == "pcm" else source_rate

    def header(self) -> bytes:
        if self.fmt != "wav":
            return b""
        # A streamed WAV: the lengths are unknown, so they say "as long as it goes" (0xFFFFFFFF), as ffmpeg does.
        fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, self.rate, self.rate * 2, 2, 16)
        return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + fmt_chunk + b"data" + struct.pack("<I", 0xFFFFFFFF)

    def encode(self, audio: np.ndarray, rate: int) -> bytes:
        """The bytes of one more segment, preceded by the pause that separates it from the previous one."""
        if self._segments:
            audio = np.concatenate([np.zeros(int(round(SEGMENT_PAUSE_S * rate)), dtype=np.float32), audio])
        self._segments += 1
        return self._encode(audio, rate)

    def _encode(self, audio: np.ndarray, rate: int) -> bytes:
        pcm = (np.clip(resample(audio, rate, self.rate), -1.0, 1.0) * 32767.0).astype("<i2")
        if self._container is None:
            return pcm.tobytes()
        import av

        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = self.rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if self._container is None:
            return b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()

    def whole(self, audio: np.ndarray, rate: int) -> Iterator[bytes]:
        """A complete answer from finished audio (the stored object of a job that streamed nothing)."""
        yield self.header()
        yield self._encode(audio, rate)
        yield self.finish()
