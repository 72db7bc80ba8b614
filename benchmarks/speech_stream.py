"""Time to first byte of `POST /v1/audio/speech` against the whole answer, through the official `openai` client.

    .venv/bin/python benchmarks/speech_stream.py [--rounds 3] [--engine]

Starts a farm of its own on loopback (tests/support/faultfarm.py: PostgreSQL, Redis, SeaweedFS, `voicefarm api` with
2 gunicorn processes as `voicefarm up`, one `voicefarm worker --cpu 1` with the engine's default threads), warms the
worker up with one request, then streams `response_format="pcm"` with `with_streaming_response.create` and voice
`jm_kumo`: a five-sentence answer (the test's text, tests/api/test_speech.py) and a one-sentence answer, each
`--rounds` times with a different number in the text so that the dedup cache answers none of them. Prints, per
input, the median TTFB (from the call to the first non-empty chunk), the median whole answer (to the last byte),
their ratio, the audio length, the stream's segments, and the stall: how long a player that starts at the first
byte and plays in real time would wait for audio that has not arrived. `./run.sh bench` prints the same figures
(`measure`) from its own farm, whose workers have one engine thread each.

--engine first speaks the five sentences in this process, split as a stored job is (packed up to the engine's
cap) and as a streamed one is (`growing`), alternating for --rounds rounds: each segment's engine time (wall and
CPU), so the first segment's share of the whole is seen without the farm and without a niced worker's waits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402

PCM_RATE = 24000
NUMBERS = ("seven", "eight", "six", "five", "four", "ten")
FIVE_SENTENCES = (
    "The first train leaves the station at {n} in the morning. "
    "It crosses the river and climbs slowly into the hills. "
    "By nine o'clock the valley is far behind. "
    "Passengers open their windows to smell the pine trees. "
    "At noon the train reaches the little town by the lake."
)
ONE_SENTENCE = "The next train to the city leaves from platform {n} in a few minutes."


@dataclass
class Stream:
    ttfb_s: float
    total_s: float
    audio_s: float
    stall_s: float
    segments: int


@dataclass
class Figures:
    label: str
    chars: int
    runs: list[Stream]

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(run, name) for run in self.runs))

    def line(self) -> str:
        ttfb, total = self.median("ttfb_s"), self.median("total_s")
        return (
            f"TTFB {ttfb:.2f} s of {total:.2f} s ({ttfb / total:.2f}), audio {self.median('audio_s'):.1f} s, "
            f"{self.runs[0].segments} segments, stall {self.median('stall_s'):.2f} s "
            f"(medians of {len(self.runs)}; TTFB each: {', '.join(f'{r.ttfb_s:.2f}' for r in self.runs)})"
        )


def stall(arrivals: list[tuple[float, int]]) -> float:
    """Seconds a player that starts with the first chunk and plays in real time waits for audio: (time, bytes)."""
    if not arrivals:
        return 0.0
    start, waited, played = arrivals[0][0], 0.0, 0.0
    for at, size in arrivals:
        due = start + played / (2 * PCM_RATE) + waited  # when the player runs out of what came before
        waited += max(0.0, at - due)
        played += size
    return waited


def stream_once(client: Any, farm_url: str, key: str, text: str) -> Stream:
    arrivals: list[tuple[float, int]] = []
    started = time.perf_counter()
    with client.audio.speech.with_streaming_response.create(
        model="kokoro", voice="jm_kumo", input=text, response_format="pcm"
    ) as response:
        job_id = response.headers.get("x-voicefarm-job-id")
        for chunk in response.iter_bytes():
            if chunk:
                arrivals.append((time.perf_counter(), len(chunk)))
    total = time.perf_counter() - started
    if not arrivals:
        raise RuntimeError(f"speech: no audio for {text!r}")
    segments = 0
    deadline = time.monotonic() + 60  # the job row completes just after the last segment streamed
    while time.monotonic() < deadline:
        job = requests.get(f"{farm_url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        if job.json()["status"] == "succeeded":
            segments = len(job.json()["result"]["segments"])
            break
        time.sleep(0.2)
    return Stream(
        ttfb_s=arrivals[0][0] - started,
        total_s=total,
        audio_s=sum(size for _, size in arrivals) / (2 * PCM_RATE),
        stall_s=stall(arrivals),
        segments=segments,
    )


def measure(farm_url: str, key: str, rounds: int = 3) -> list[Figures]:
    """The five-sentence and the one-sentence figures, after one warm-up request."""
    import openai

    client = openai.OpenAI(base_url=f"{farm_url}/v1", api_key=key, max_retries=0, timeout=600)
    client.audio.speech.create(model="kokoro", voice="jm_kumo", input="Warm up.", response_format="pcm")
    out = []
    for label, template in (("five sentences", FIVE_SENTENCES), ("one sentence", ONE_SENTENCE)):
        texts = [template.format(n=NUMBERS[i % len(NUMBERS)]) for i in range(rounds)]
        out.append(Figures(label, len(texts[0]), [stream_once(client, farm_url, key, text) for text in texts]))
    return out


def engine_split(rounds: int) -> None:
    """Each segment's engine time, packed vs growing, in this process (one engine, its default threads)."""
    from shared.config import Settings
    from shared.engines import catalogue
    from shared.text.normalization import normalize_for_speech
    from shared.text.split import split_text
    from worker.engines import create_engine, engine_options

    engine = create_engine("kokoro", **engine_options("kokoro", Settings()))
    engine.load()
    engine.synthesize("Warm up.", voice="jm_kumo", language="en")
    text, cap = FIVE_SENTENCES.format(n=NUMBERS[0]), catalogue("kokoro").capabilities.max_segment_chars
    for _ in range(rounds):
        for label, growing in (("packed", False), ("growing", True)):
            times = []
            for segment in split_text(text, cap, growing=growing):
                wall, cpu = time.perf_counter(), time.process_time()
                engine.synthesize(normalize_for_speech(segment, "en"), voice="jm_kumo", language="en")
                times.append((len(segment), time.perf_counter() - wall, time.process_time() - cpu))
            total = sum(t[1] for t in times)
            print(
                f"engine, {label:<7}: "
                + ", ".join(f"{n} ch {w:.2f} s (CPU {c:.2f})" for n, w, c in times)
                + f"; whole {total:.2f} s, first {times[0][1] / total:.2f} of it; load {load()}",
                flush=True,
            )


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="streams per input (default 3)")
    parser.add_argument("--engine", action="store_true", help="first the engine alone: packed vs growing segments")
    args = parser.parse_args(argv)
    if args.engine:
        engine_split(args.rounds)
    from tests.support.faultfarm import FaultFarm

    logs = Path(tempfile.mkdtemp(prefix="vf-stream-"))
    print(f"speech stream: logs in {logs}; load average {load()} on {os.cpu_count()} cores", flush=True)
    farm = FaultFarm(logs, worker_cpu=1, api_workers=2)
    try:
        farm.start_services()
        farm.start_api()
        farm.start_worker()
        farm.wait_workers_ready(300)
        for figures in measure(farm.url, farm.key, args.rounds):
            print(f"speech stream, {figures.label} ({figures.chars} characters): {figures.line()}", flush=True)
    finally:
        farm.stop_all()
    print(f"speech stream: load average at the end {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
