"""`POST /v1/audio/speech` and `GET /v1/models` through the official `openai` package, unmodified, against a
running farm (gunicorn API + a kokoro CPU worker): every response format decodes, streaming is real (the first
bytes arrive when the first sentence is synthesized, and the stream is the stored object without clicks at its
seams), errors come back as the client's own exceptions."""

from __future__ import annotations

import io
import time

import av
import numpy as np
import openai
import pytest
import requests
import soundfile as sf

from shared.provenance import watermark
from tests.support.livefarm import LiveFarm, live_farm  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
FIVE_SENTENCES = (
    "The first train leaves the station at seven in the morning. "
    "It crosses the river and climbs slowly into the hills. "
    "By nine o'clock the valley is far behind. "
    "Passengers open their windows to smell the pine trees. "
    "At noon the train reaches the little town by the lake."
)


def client_for(farm: LiveFarm) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{farm.url}/v1", api_key=farm.key, max_retries=0, timeout=300)


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0, 24000
    with av.open(io.BytesIO(data), format={"aac": "aac", "opus": "ogg"}.get(fmt, fmt)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        return np.concatenate(frames).astype(np.float32), int(stream.rate)


def test_models_and_every_format(live_farm: LiveFarm) -> None:  # noqa: F811
    client = client_for(live_farm)
    ids = {model.id for model in client.models.list()}
    assert {"kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= ids

    # mp3 is the default format; an OpenAI voice name maps to a stock voice.
    answer = client.audio.speech.create(model="tts-1", voice="alloy", input="Good morning, everyone.")
    mp3 = answer.content
    assert answer.response.headers["content-type"] == "audio/mpeg"
    audio, rate = decode(mp3, "mp3")
    assert rate == 24000 and 0.6 < len(audio) / rate < 5.0 and float(np.abs(audio).max()) > 0.05

    for fmt in ("opus", "aac", "flac", "wav", "pcm"):
        data = client.audio.speech.create(
            model="kokoro",
            voice="jf_alpha",
            input="Good morning, everyone.",
            response_format=fmt,  # type: ignore[arg-type]
        ).content
        audio, rate = decode(data, fmt)
        assert 0.6 < len(audio) / rate < 5.0, (fmt, len(audio), rate)
        assert float(np.abs(audio).max()) > 0.05, fmt
        if fmt == "wav":  # a streamed WAV says "unknown length" in its header; libsndfile reads it to the end
            assert len(sf.read(io.BytesIO(data), dtype="float32")[0]) == len(audio)


def stream(client: openai.OpenAI, text: str) -> tuple[float, float, bytes, str]:
    """One streamed pcm answer: (seconds to the first non-empty chunk, to the end, the bytes, the job id)."""
    started = time.perf_counter()
    first: float | None = None
    chunks: list[bytes] = []
    with client.audio.speech.with_streaming_response.create(
        model="kokoro", voice="jm_kumo", input=text, response_format="pcm"
    ) as response:
        job_id = response.headers.get("x-voicefarm-job-id")
        assert job_id
        for chunk in response.iter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - started
            chunks.append(chunk)
    assert first is not None
    return first, time.perf_counter() - started, b"".join(chunks), job_id


def finished(farm: LiveFarm, job_id: str) -> dict:
    deadline = time.monotonic() + 60  # the worker stores the whole object just after the last segment streams
    while (job := requests.get(f"{farm.url}/v1/jobs/{job_id}", headers=farm.headers(), timeout=10).json())[
        "status"
    ] != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.2)
    return dict(job)


def test_streaming_starts_with_the_first_sentence(live_farm: LiveFarm) -> None:  # noqa: F811
    client = client_for(live_farm)
    client.audio.speech.create(model="kokoro", voice="jm_kumo", input="Warm up.", response_format="pcm")
    # Twice, with another hour in the second text so that the dedup cache answers neither.
    runs = [stream(client, text) for text in (FIVE_SENTENCES, FIVE_SENTENCES.replace("seven", "eight"))]
    first, total, data, job_id = runs[0]
    job = finished(live_farm, job_id)
    segments = job["result"]["segments"]
    duration = len(data) / 2 / 24000
    for ttfb, whole, _data, _job in runs:
        print(
            f"speech stream: TTFB {ttfb:.2f} s, whole answer {whole:.2f} s ({ttfb / whole:.2f}), {duration:.1f} s "
            f"of audio, {len(segments)} segments"
        )
    # The streaming split (shared/text/split.py): the first sentence alone, then segments that grow.
    assert [s["text"] for s in segments][0] == FIVE_SENTENCES.split(". ")[0] + "."
    assert len(segments) == 3 and duration > 8.0
    # The first audio arrives within about a quarter of the whole answer (the first sentence is 59 of 266
    # characters, 0.21 of the engine's time). A niced worker on a busy 2-core machine can lose the CPU during one
    # segment, so the better of two runs is held to 0.3; packed segments gave 0.45-1.0 (the first was 156 of 265
    # characters), docs/benchmarks/streaming.md.
    assert min(ttfb / whole for ttfb, whole, _d, _j in runs) < 0.3, [(r[0], r[1]) for r in runs]

    # The stream is the stored object but for the watermark (each segment marked as it is published, the stored
    # object as a whole: both carry it, and they differ by their marks only, some 50 dB under the speech), and its
    # seams neither step nor click.
    stored = requests.get(f"{live_farm.url}/v1/jobs/{job_id}/audio", headers=live_farm.headers(), timeout=30)
    assert stored.status_code == 200 and len(stored.content) == len(data)
    audio = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
    kept = np.frombuffer(stored.content, dtype="<i2").astype(np.float32) / 32767.0
    assert watermark.detect(audio, 24000)[0] and watermark.detect(kept, 24000)[0]
    assert 10 * np.log10(np.sum(kept**2) / np.sum((kept - audio) ** 2)) > 30
    edges = [round(s[name] * 24000) for s in segments for name in ("start_s", "end_s")][1:-1]
    inner = [audio[round(s["start_s"] * 24000) + 240 : round(s["end_s"] * 24000) - 240] for s in segments]
    step = max(float(np.max(np.abs(np.diff(part)))) for part in inner)
    for edge in edges:  # the times are rounded to the millisecond: look 1 ms either side
        around = audio[edge - 24 : edge + 24]
        assert float(np.max(np.abs(np.diff(around)))) <= step, edge

    # One sentence: its TTFB is the whole sentence's synthesis (printed for docs/benchmarks/streaming.md).
    first, total, data, _ = stream(client, "The next train to the city leaves from platform two in a few minutes.")
    print(f"speech stream, one sentence: TTFB {first:.2f} s, whole answer {total:.2f} s")
    assert len(data) / 2 / 24000 > 2.0


def test_speed_instructions_and_errors(live_farm: LiveFarm) -> None:  # noqa: F811
    client = client_for(live_farm)
    fast = client.audio.speech.create(
        model="tts-1", voice="nova", input="Good morning, everyone.", response_format="wav", speed=4.0
    )
    assert "outside" in fast.response.headers.get("x-voicefarm-warnings", "")
    slow = client.audio.speech.create(
        model="tts-1", voice="nova", input="Good morning, everyone.", response_format="wav", instructions="Slowly."
    )
    fast_s = len(decode(fast.content, "wav")[0]) / 24000
    slow_s = len(decode(slow.content, "wav")[0]) / 24000
    assert slow_s > fast_s * 1.3, (slow_s, fast_s)

    with pytest.raises(openai.BadRequestError) as bad_voice:
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hello.")
    assert bad_voice.value.body["code"] == "unknown_voice"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="whisper-1", voice="alloy", input="Hello.")
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{live_farm.url}/v1", api_key="wrong", max_retries=0).audio.speech.create(
            model="tts-1", voice="alloy", input="Hello."
        )
