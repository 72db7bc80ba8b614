"""Is this file the farm's? The watermark detector's verdict and the file's implicit label, for `POST /v1/verify`
and `voicefarm verify` (docs/reference/api.md, docs/guide/labels.md).

Any file FFmpeg decodes is read (every format the farm writes, and what a platform re-encodes them to), or raw
16-bit PCM when the caller says so (the farm's `pcm` has no container). Uploads are untrusted: decoding stops after
`MAX_SECONDS` of audio whatever the container declares, channels are mixed down as frames arrive, and the detector
looks at that much, which is enough for its verdict (it averages over the frames where there is sound).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.errors import BadRequest
from shared.provenance import aigc, watermark

MAX_SECONDS = 60.0
MIN_RATE, MAX_RATE = 8000, 192000


@dataclass(frozen=True)
class Verdict:
    watermarked: bool
    score: float
    analysed_s: float
    label: dict[str, str] | None  # the AIGC tag's fields, when the file has one

    def view(self) -> dict[str, Any]:
        """What anyone may be told: the detector's verdict, not the label."""
        return {"watermarked": self.watermarked, "score": round(self.score, 4), "analysed_s": round(self.analysed_s, 3)}


def decode(data: bytes, *, pcm_rate: int | None = None, max_seconds: float = MAX_SECONDS) -> tuple[np.ndarray, int]:
    """(float32 mono audio, sample rate) of the first `max_seconds` of an encoded file, or of raw s16le mono PCM at
    `pcm_rate`."""
    if not data:
        raise BadRequest("the audio file is empty", code="empty_audio")
    if pcm_rate is not None:
        _check_rate(pcm_rate)
        usable = data[: (min(len(data), int(max_seconds * pcm_rate) * 2) // 2) * 2]
        return np.frombuffer(usable, dtype="<i2").astype(np.float32) / 32768.0, pcm_rate
    import av  # FFmpeg's decoders; imported here so nothing else pays for it

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise BadRequest("the file has no audio stream", code="no_audio_stream")
            stream = container.streams.audio[0]
            rate = int(stream.rate or 0)
            _check_rate(rate)
            cap = int(max_seconds * rate)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            parts: list[np.ndarray] = []
            have = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    block = out.to_ndarray().reshape(-1)
                    parts.append(block[: cap - have])
                    have += len(parts[-1])
                if have >= cap:
                    break
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise BadRequest(
            "the audio could not be decoded; send a file in a format FFmpeg reads (wav, flac, mp3, ogg, opus, m4a, "
            "...) or raw 16-bit PCM with format=pcm",
            code="undecodable_audio",
        ) from exc
    if not have:
        raise BadRequest("the file holds no audio samples", code="empty_audio")
    return np.concatenate(parts).astype(np.float32, copy=False), rate


def _check_rate(rate: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise BadRequest(
            f"the sample rate is {rate} Hz; {MIN_RATE}-{MAX_RATE} Hz is accepted", code="unsupported_sample_rate"
        )


def read_label(data: bytes) -> dict[str, str] | None:
    """The fields of the file's `AIGC` tag (shared/provenance/aigc.py), wherever its container keeps it; None when
    it has none or the value is not the label's JSON object."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            tags = [dict(container.metadata), *(dict(s.metadata) for s in container.streams.audio)]
    except (av.FFmpegError, ValueError, OSError):
        return None
    for found in tags:
        value = next((v for k, v in found.items() if k.upper() == aigc.TAG), None)
        if value is None:
            continue
        try:
            fields = json.loads(value)
        except ValueError:
            return None
        if isinstance(fields, dict):
            return {str(k): str(v) for k, v in fields.items()}
    return None


def verify(data: bytes, *, pcm_rate: int | None = None) -> Verdict:
    """The detector's verdict on a file's first `MAX_SECONDS`, and its label."""
    audio, rate = decode(data, pcm_rate=pcm_rate)
    marked, value = watermark.detect(audio, rate)
    label = None if pcm_rate is not None else read_label(data)
    return Verdict(marked, value, len(audio) / rate, label)
