"""Profile build time against per-job synthesis time: the cost a cloned voice pays once versus every job.

    .venv/bin/python benchmarks/profiles.py [--jobs 5]

Runs in-process with the kokoro engine (no services): reference normalisation, Whisper transcription and the
engine's clone() make up the one-off profile build; each synthesis job then only loads the stored profile.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from shared.audio.reference import inspect_upload, normalise, to_wav
from worker.engines import create_engine
from worker.engines.base import VoiceProfile
from worker.evaluators.asr import Transcriber

REFERENCE_TEXT = "The weather is lovely today, so we are going for a long walk in the park."
JOB_TEXTS = [
    "Thank you for calling, how can I help you today?",
    "Your order has shipped and will arrive on Friday.",
    "Please hold while I transfer your call.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=5)
    args = parser.parse_args()

    engine = create_engine("kokoro")
    started = time.perf_counter()
    engine.load()
    print(f"engine load: {time.perf_counter() - started:.2f} s")
    reference = engine.synthesize(REFERENCE_TEXT, voice="jm_kumo", language="en").audio
    upload = to_wav(normalise(inspect_upload(_wav(reference))))

    with tempfile.TemporaryDirectory() as cache:
        transcriber = Transcriber(Path(cache))
        transcriber.transcribe(reference[:24000], 24000, "en")  # load Whisper outside the timing
        steps: dict[str, float] = {}
        t0 = time.perf_counter()
        clip = normalise(inspect_upload(upload))
        steps["normalise"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        transcript, _ = transcriber.transcribe(clip.audio, clip.sample_rate, None)
        steps["transcribe"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        profile = engine.clone(clip.audio, clip.sample_rate, transcript)
        steps["engine clone (first, incl. stock-voice calibration)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        profile = engine.clone(clip.audio, clip.sample_rate, transcript)
        steps["engine clone (warm)"] = time.perf_counter() - t0

    stored = VoiceProfile(engine=profile.engine, data=bytes(profile.data))
    per_job: list[float] = []
    audio_s: list[float] = []
    for i in range(args.jobs):
        t0 = time.perf_counter()
        out = engine.synthesize(JOB_TEXTS[i % len(JOB_TEXTS)], voice=stored, mode="clone", language="en")
        per_job.append(time.perf_counter() - t0)
        audio_s.append(len(out.audio) / out.sample_rate)

    print(f"reference: {len(clip.audio) / clip.sample_rate:.2f} s, transcript {transcript!r}")
    print(f"profile size: {len(profile.data)} bytes")
    for name, seconds in steps.items():
        print(f"profile build / {name}: {seconds:.3f} s")
    build = steps["normalise"] + steps["transcribe"] + steps["engine clone (warm)"]
    print(f"profile build total (warm engine): {build:.3f} s")
    print(
        f"per synthesis job with the stored profile: mean {statistics.mean(per_job):.3f} s "
        f"(min {min(per_job):.3f}, max {max(per_job):.3f}) for {statistics.mean(audio_s):.2f} s of audio"
    )


def _wav(audio) -> bytes:  # type: ignore[no-untyped-def]
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, 24000, format="WAV")
    return buf.getvalue()


if __name__ == "__main__":
    main()
