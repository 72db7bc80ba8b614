"""The kokoro engine's graphs side by side: RTF per language, and how far the float32 audio is from the int8 audio.

    .venv/bin/python benchmarks/engine_variants.py [--threads 2] [--rounds 2] [--lines 3] [--no-checks]
    .venv/bin/python benchmarks/engine_variants.py --farm [--threads 0]

Loads the engine twice in this process, once per graph (worker/engines/kokoro/variants.py): `int8`, the shipped
graph, and `float32`, its weights dequantised at load (built once and cached under the data dir, `--data-dir`,
default var). Both speak the same lines per language (en, zh, ja, each in its default stock voice) through
`synthesize`, once untimed (warm-up, and the audio the checks use), then for --rounds rounds with the graphs
taking turns line by line, so load from other processes hits them alike. Prints per language and graph the audio
seconds, the wall seconds and the RTF (wall / audio), and this process's CPU seconds per audio second (all threads:
on a machine other processes keep busy, the steadier measure of what each graph costs), with the load average at
the start and end; then, unless
--no-checks, the ASR error of each graph's audio against the text (Whisper through tests/support/asr.py: word error
for en, character error for zh and ja) and the speaker similarity of the float32 audio to the int8 audio of the
same line (worker/evaluators/similarity.py, GE2E embeddings; 1.0 is the same voice), and the machine's stored
`auto` choice when it has one.

--farm measures through the farm's job results instead: a farm on loopback (tests/support/faultfarm.py: its own
PostgreSQL, Redis, SeaweedFS and `voicefarm api`) with one `voicefarm worker --cpu 1` at --threads intra-op threads
(0: every core, as `./run.sh` runs it; at the farm's nice value unless --worker-nice), restarted once per graph
(`VOICEFARM_KOKORO_GRAPH`); after one untimed job, the eight English lines of `FARM_LINES` are submitted one at a
time, each waited for, and the median and spread of their `result.rtf` (the worker's engine seconds / audio
seconds) are printed per graph.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_rtf import SENTENCES  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.engines.kokoro import DEFAULT_VOICES  # noqa: E402
from worker.engines.kokoro import KokoroEngine  # noqa: E402
from worker.engines.kokoro.variants import GRAPHS  # noqa: E402

# The same three lines per language as benchmarks/engine_rtf.py, so the two pages' figures compare.
LINES = SENTENCES


# Eight English lines of 3-6 s, none of them among the lines above.
FARM_LINES = [
    "Thank you for calling. All of our agents are busy right now, but your call is important to us.",
    "The museum is closed on Mondays, but the gardens stay open until sunset every day of the week.",
    "If you need more time to finish the form, press one to hear the options again.",
    "The train to the airport leaves from platform four, every twenty minutes.",
    "She opened the window and listened to the rain falling on the old tin roof.",
    "Please keep your seat belt fastened while the captain has the sign switched on.",
    "We will send the parcel tomorrow morning, and it should arrive before the weekend.",
    "The library has moved to a new building across the street from the town hall.",
]


@dataclass
class Figures:
    """One graph on one language: seconds of audio and of wall time over the timed rounds, and the warm-up audio."""

    audio_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time, all threads: what the work costs, whatever else runs
    audio: list[np.ndarray] = field(default_factory=list)

    @property
    def rtf(self) -> float:
        return self.wall_s / self.audio_s if self.audio_s else float("nan")

    @property
    def cpu_rtf(self) -> float:
        return self.cpu_s / self.audio_s if self.audio_s else float("nan")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def engines(threads: int, data_dir: Path) -> dict[str, KokoroEngine]:
    """One loaded engine per graph, with the data dir's cache (the float32 graph is built there once)."""
    settings = Settings(data_dir=data_dir)
    loaded: dict[str, KokoroEngine] = {}
    for graph in GRAPHS:
        engine = KokoroEngine(settings, threads=threads, graph=graph)
        engine.load()
        loaded[graph] = engine
    return loaded


def compare(
    threads: int, rounds: int, lines: int, languages: tuple[str, ...] = tuple(LINES), data_dir: Path = Path("var")
) -> dict[str, dict[str, Figures]]:
    """Figures per language, then per graph (see the module's docstring)."""
    loaded = engines(threads, data_dir)
    figures: dict[str, dict[str, Figures]] = {}
    for language in languages:
        voice = DEFAULT_VOICES[language]
        texts = LINES[language][:lines]
        figures[language] = {graph: Figures() for graph in loaded}
        for graph, engine in loaded.items():  # warm-up on every line, untimed; its audio is what the checks hear
            figures[language][graph].audio = [
                engine.synthesize(text, voice=voice, language=language).audio for text in texts
            ]
        for _ in range(rounds):
            for text in texts:
                for graph, engine in loaded.items():
                    started, cpu = time.perf_counter(), time.process_time()
                    out = engine.synthesize(text, voice=voice, language=language)
                    figures[language][graph].wall_s += time.perf_counter() - started
                    figures[language][graph].cpu_s += time.process_time() - cpu
                    figures[language][graph].audio_s += len(out.audio) / out.sample_rate
    return figures


def checks(figures: dict[str, dict[str, Figures]]) -> list[str]:
    """Rows: per language and graph the mean ASR error, and the float32-to-int8 speaker similarity."""
    from tests.support.asr import error_rate, transcribe
    from worker.engines.kokoro.model import SAMPLE_RATE
    from worker.evaluators.similarity import shared_encoder

    encoder = shared_encoder()
    rows = [f"{'language':<9}{'graph':<9}{'ASR error':>10}  {'similarity to int8 (mean / min)':<32}"]
    for language, by_graph in figures.items():
        texts = LINES[language]
        for graph, fig in by_graph.items():
            errors = [
                error_rate(text, transcribe(audio, SAMPLE_RATE, language), language)
                for text, audio in zip(texts, fig.audio, strict=False)
            ]
            similarity = ""
            if graph != "int8":
                values = [
                    encoder.similarity(encoder.embed(a, SAMPLE_RATE), encoder.embed(b, SAMPLE_RATE))
                    for a, b in zip(fig.audio, by_graph["int8"].audio, strict=True)
                ]
                similarity = f"{statistics.mean(values):.3f} / {min(values):.3f}"
            rows.append(f"{language:<9}{graph:<9}{100 * statistics.mean(errors):>9.1f}%  {similarity}")
    return rows


def rtf_rows(figures: dict[str, dict[str, Figures]]) -> list[str]:
    rows = [
        f"{'language':<9}{'graph':<9}{'audio s':>9}{'wall s':>9}{'RTF':>8}{'vs int8':>9}"
        f"{'CPU s':>9}{'CPU s/audio s':>15}{'vs int8':>9}"
    ]
    for language, by_graph in figures.items():
        for graph, fig in by_graph.items():
            gain, cpu_gain = by_graph["int8"].rtf / fig.rtf, by_graph["int8"].cpu_rtf / fig.cpu_rtf
            rows.append(
                f"{language:<9}{graph:<9}{fig.audio_s:>9.2f}{fig.wall_s:>9.2f}{fig.rtf:>8.3f}{gain:>8.2f}x"
                f"{fig.cpu_s:>9.2f}{fig.cpu_rtf:>15.3f}{cpu_gain:>8.2f}x"
            )
    return rows


def stored_choice(threads: int, data_dir: Path) -> Any:
    from worker.engines.kokoro import variants
    from worker.engines.kokoro.model import model_digest

    return variants.stored_choice(variants.cache_dir("", data_dir), variants.machine_key(model_digest(), threads))


def _rss_mb(pid: int) -> float:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:")), 0.0)


def through_farm(threads: int, data_dir: Path, worker_nice: int | None = None) -> dict[str, list[float]]:
    """Each graph's `result.rtf` for the `FARM_LINES`, one job at a time, through a farm (see the docstring)."""
    import random
    import tempfile

    from sqlalchemy import func, select

    from shared.models import Worker, utcnow
    from tests.support.faultfarm import FaultFarm, descendants
    from voicefarm.client.api import Client

    env = {"VOICEFARM_ENGINE_THREADS": str(threads)}
    if worker_nice is not None:
        env["VOICEFARM_WORKER_NICE"] = str(worker_nice)
    farm = FaultFarm(Path(tempfile.mkdtemp(prefix="vf-variants-")), worker_cpu=1, extra_env=env)

    def registered_since(since: datetime) -> bool:
        """A worker row (re)registered after `since`: the restarted worker reuses its name, so its row."""
        with farm.sessions() as session:
            started = session.scalar(select(func.max(Worker.started_at)))
        return started is not None and started.replace(tzinfo=started.tzinfo or since.tzinfo) > since

    rtfs: dict[str, list[float]] = {}
    try:
        farm.start_services()
        farm.start_api()
        client = Client(farm.url, farm.key, timeout=60)
        for graph in GRAPHS:
            since = utcnow()
            farm.start_worker(env={"VOICEFARM_KOKORO_GRAPH": graph})
            farm.wait_until(partial(registered_since, since), 900, f"the {graph} worker to register", 0.5)
            seed = random.randrange(2**31)  # the dedup cache never answers from another graph's run
            client.wait_job(client.submit_job("Hello there.", format="wav", seed=seed)["id"], timeout=300)
            rtfs[graph] = []
            for text in FARM_LINES:
                job = client.submit_job(text, voice="jf_alpha", language="en", seed=seed, format="wav")
                done = client.wait_job(job["id"], timeout=300)
                if done.get("status") != "succeeded":
                    raise RuntimeError(f"{graph}: job {job['id']} ended {done.get('status')}: {done.get('error')}")
                result: dict[str, Any] = dict(done.get("result") or {})
                rtfs[graph].append(float(result["rtf"]))
            rss = max(_rss_mb(pid) for pid in [farm.worker.pid, *descendants(farm.worker.pid)]) if farm.worker else 0
            print(
                f"{graph}: result.rtf {' '.join(f'{v:.3f}' for v in rtfs[graph])}; worker RSS {rss:.0f} MB", flush=True
            )
            farm.stop_worker()
    finally:
        farm.stop_all()
    return rtfs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lines", type=int, default=3, help="lines per language (at most 3)")
    parser.add_argument("--languages", default=",".join(LINES), help="comma list of en, zh, ja")
    parser.add_argument("--data-dir", type=Path, default=Path("var"), help="where the float32 graph is cached")
    parser.add_argument("--no-checks", action="store_true", help="timings only: no ASR, no speaker similarity")
    parser.add_argument("--farm", action="store_true", help="RTF from the farm's job results (see the docstring)")
    parser.add_argument("--worker-nice", type=int, help="--farm: the worker's nice value (default: the farm's)")
    args = parser.parse_args()
    if args.farm:
        threads = args.threads if "--threads" in sys.argv else 0
        print(f"load average at start: {load_average()} ({os.cpu_count()} cores), worker threads {threads or 'all'}")
        rtfs = through_farm(threads, args.data_dir, args.worker_nice)
        print(f"{len(FARM_LINES)} English lines, one job at a time, voice jf_alpha; result.rtf per job")
        print(f"{'graph':<9}{'median':>8}{'min':>8}{'max':>8}  jobs")
        for graph, values in rtfs.items():
            jobs = " ".join(f"{v:.3f}" for v in values)
            print(f"{graph:<9}{statistics.median(values):>8.3f}{min(values):>8.3f}{max(values):>8.3f}  {jobs}")
        print(f"load average at end: {load_average()}")
        return 0
    languages = tuple(args.languages.split(","))
    print(f"load average at start: {load_average()} ({os.cpu_count()} cores), intra-op threads {args.threads}")
    started = time.perf_counter()
    figures = compare(args.threads, args.rounds, args.lines, languages, args.data_dir)
    print(f"{args.lines} lines per language x {args.rounds} rounds, graphs alternating line by line")
    print("\n".join(rtf_rows(figures)))
    print(f"load average after timing: {load_average()} ({time.perf_counter() - started:.0f} s)")
    if not args.no_checks:
        print("\n".join(checks(figures)))
    choice = stored_choice(args.threads, args.data_dir)
    if choice is not None:
        seconds = ", ".join(f"{graph} {value:.2f} s" for graph, value in choice.seconds.items())
        print(f"this machine's auto choice ({args.threads} threads): {choice.graph} (timing line: {seconds})")
    else:
        print(f"this machine has no stored auto choice for {args.threads} threads yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
