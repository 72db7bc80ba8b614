"""Post-production on real synthesized speech: loudness to a LUFS target under a true-peak ceiling, silence
trimmed to a pad, fit to a slot keeping pitch, and every output format decoded back."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import pyworld
import soundfile as sf
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.audio import mastering
from shared.audio.codecs import encode
from shared.config import Settings
from shared.db import transaction
from shared.jobs import state as jobs
from shared.models import Job
from shared.schemas import JobRequest
from worker.context import WorkerContext
from worker.engines import create_engine
from worker.synthesis import run_synthesis

pytestmark = pytest.mark.slow
RATE = 24000
LINE = "The weather is lovely today, so we are going for a long walk in the park."


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    engine = create_engine("kokoro")
    engine.load()
    audio = engine.synthesize(LINE, voice="jf_alpha", language="en").audio
    # Quiet, with silence around it, as a raw take often is.
    pad = np.zeros(RATE // 2, dtype=np.float32)
    return np.concatenate([pad, audio * 0.5, pad]).astype(np.float32)


def median_f0(audio: np.ndarray) -> float:
    f0, _ = pyworld.harvest(audio.astype(np.float64), RATE)
    return float(np.median(f0[f0 > 0]))


@pytest.mark.parametrize("target", [-14.0, -16.0, -18.0, -10.0, -30.0, -23.5])
def test_loudness_reaches_the_target_under_the_true_peak_ceiling(speech: np.ndarray, target: float) -> None:
    assert abs(mastering.integrated_lufs(speech, RATE) - target) > 2  # the raw take is far from every target
    out = mastering.master(speech, RATE, mastering.Options(loudness_lufs=target))
    assert out.loudness is not None
    assert out.loudness["true_peak_dbtp"] <= -1.0 + 0.05
    if out.warnings:  # only when the ceiling stopped it, and then it says so
        assert "true-peak ceiling" in out.warnings[0] and target > -12
    else:
        assert out.loudness["integrated_lufs"] == pytest.approx(target, abs=0.5)


def test_a_lower_true_peak_ceiling_is_kept(speech: np.ndarray) -> None:
    out = mastering.master(speech, RATE, mastering.Options(loudness_lufs=-16, true_peak_db=-3.0))
    assert out.loudness is not None and out.loudness["true_peak_dbtp"] <= -3.0 + 0.05


def test_silence_is_trimmed_to_the_pad(speech: np.ndarray) -> None:
    out = mastering.master(speech, RATE, mastering.Options(trim_pad_s=0.1))
    cut = (len(speech) - len(out.audio)) / RATE
    # The 0.5 s added at each end and the engine's own lead-in and tail went; 0.1 s stayed at each end.
    assert 0.7 < cut < 1.3
    assert 0.3 < out.shift_s < 0.7
    assert np.abs(out.audio[: int(0.02 * RATE)]).max() < 0.01  # it still starts in silence


@pytest.mark.parametrize("factor", [0.8, 0.9, 1.1, 1.2])
def test_fit_to_slot_keeps_pitch(speech: np.ndarray, factor: float) -> None:
    spoken = mastering.trim_silence(speech, RATE, 0.05)[0]
    target = len(spoken) / RATE * factor
    out = mastering.master(speech, RATE, mastering.Options(trim_pad_s=0.05, target_duration_s=target))
    assert not out.warnings
    assert len(out.audio) / RATE == pytest.approx(target, rel=mastering.FIT_TOLERANCE)
    assert median_f0(out.audio) == pytest.approx(median_f0(spoken), rel=0.06)
    assert out.scale == pytest.approx(factor, rel=0.02)


def test_a_slot_beyond_the_stretch_limit_gets_the_nearest_fit_and_a_warning(speech: np.ndarray) -> None:
    spoken_s = len(mastering.trim_silence(speech, RATE, 0.0)[0]) / RATE
    out = mastering.master(speech, RATE, mastering.Options(trim_pad_s=0.0, target_duration_s=spoken_s / 2))
    assert len(out.audio) / RATE == pytest.approx(spoken_s / 1.25, rel=0.02)
    assert out.warnings and "beyond 25%" in out.warnings[0] and "+60 %" in out.warnings[0]


def _decode(data: bytes, fmt: str) -> tuple[np.ndarray, int, int]:
    if fmt == "aac":
        import av

        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            frames = [f.to_ndarray() for f in container.decode(stream)]
            return np.concatenate(frames, axis=1).T, stream.rate, stream.codec_context.channels
    audio, rate = sf.read(io.BytesIO(data), always_2d=True)
    return audio, rate, audio.shape[1]


@pytest.mark.parametrize(
    ("fmt", "rate", "channels"),
    [
        ("wav", 8000, 1), ("wav", 44100, 2), ("flac", 11025, 1), ("flac", 48000, 2), ("ogg", 22050, 1),
        ("ogg", 16000, 2), ("mp3", 24000, 1), ("mp3", 44100, 2), ("opus", 48000, 1), ("opus", 48000, 2),
        ("aac", 24000, 1), ("aac", 44100, 2), ("aac", 8000, 1), ("wav", 37800, 1),
    ],
)  # fmt: skip
def test_every_format_decodes_back(speech: np.ndarray, fmt: str, rate: int, channels: int) -> None:
    encoded = encode(speech, RATE, fmt, rate, channels)
    audio, got_rate, got_channels = _decode(encoded.data, fmt)
    assert (got_rate, got_channels, encoded.channels) == (rate, channels, channels)
    # Codecs add priming and padding frames (AAC up to two 1024-sample frames); otherwise the length is kept.
    slack = 0.1 + (2048 / rate if fmt == "aac" else 0)
    assert len(audio) / rate == pytest.approx(len(speech) / RATE, abs=slack)
    assert np.abs(audio).max() > 0.05  # speech, not silence


def test_raw_pcm_is_16_bit_little_endian_interleaved(speech: np.ndarray) -> None:
    encoded = encode(speech, RATE, "pcm", 16000, 2)
    samples = np.frombuffer(encoded.data, dtype="<i2").reshape(-1, 2)
    assert len(samples) == pytest.approx(len(speech) * 16000 / RATE, abs=2)
    assert np.array_equal(samples[:, 0], samples[:, 1])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"loudness": -5}, "between -30 and -10"),
        ({"loudness": {"target": -16, "true_peak": 1}}, "true_peak"),
        ({"format": "mp3", "sample_rate": 9000}, "mp3 output takes sample_rate"),
        ({"format": "aac", "sample_rate": 37800}, "aac output takes sample_rate"),
        ({"sample_rate": 96000}, "between 8000 and 48000"),
        ({"channels": 3}, "channels"),
        ({"target_duration_s": 0}, "target_duration_s"),
        ({"trim_silence_s": -1}, "trim_silence_s"),
    ],
)
def test_bad_post_production_options_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JobRequest.model_validate({"text": "Hi.", **fields})


@pytest.fixture
def ctx(farm_settings: Settings) -> Iterator[WorkerContext]:
    ctx = WorkerContext.build(farm_settings.model_copy(update={"worker_name": "mastering-test"}))
    yield ctx
    ctx.stop()


def test_a_job_comes_back_at_its_loudness_within_its_slot(ctx: WorkerContext, sessions: sessionmaker[Session]) -> None:
    text = "The first line is here. And this is the second one, which ends the text."
    request = JobRequest(text=text, loudness=-16, trim_silence_s=0.05, target_duration_s=3.2, format="aac")
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        job, _ = jobs.create_job(
            session, tenant_id=tenant.id, idempotency_key=None, engine="kokoro", text=text, voice="jf_alpha",
            mode="clone", language="en", format="aac", options=request.mastering_options().to_dict(),
        )  # fmt: skip
        job_id = job.id
    assert run_synthesis(ctx, job_id) == "succeeded"
    with sessions() as session:
        row = session.get(Job, job_id)
        assert row is not None and row.result is not None
        result = row.result
    assert result["loudness"]["integrated_lufs"] == pytest.approx(-16, abs=0.5)
    assert result["loudness"]["true_peak_dbtp"] <= -1.0 + 0.05
    assert result["duration_s"] == pytest.approx(3.2, rel=0.05), result["warnings"]
    audio, rate, _ = _decode(ctx.storage.get(result["key"]), "aac")
    assert mastering.integrated_lufs(audio[:, 0].astype(np.float32), rate) == pytest.approx(-16, abs=0.7)
    segments = result["segments"]
    assert " ".join(s["text"] for s in segments) == text
    # Segment times follow the trim and the stretch: inside the delivered audio, in order.
    assert segments[0]["start_s"] >= 0 and segments[-1]["end_s"] <= result["duration_s"] + 0.01
    assert all(a["end_s"] <= b["start_s"] for a, b in zip(segments, segments[1:], strict=False))
    assert all(s["start_s"] < s["end_s"] for s in segments)
    assert result["post_s"] > 0
