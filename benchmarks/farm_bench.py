"""`./run.sh bench [--quick]`: one table of the farm's figures, from a farm this command starts on loopback.

The farm (tests/support/faultfarm.py, as benchmarks/batch_1000.py uses it): its own PostgreSQL, Redis and SeaweedFS on
free loopback ports, `voicefarm api` (2 gunicorn processes, as `voicefarm up`), `voicefarm reconcile`,
`voicefarm qa-worker` and kokoro workers with one intra-op thread each (`VOICEFARM_ENGINE_THREADS=1`, so two
workers on two cores do not fight over threads). In order:

(a) full mode first: the engine's onnxruntime session before and after tuning (benchmarks/kokoro_rtf.py);
(f) cold start of a worker process (spawn to registered, engine loaded) and its memory (RSS);
(a) the engine called in this process vs the same lines through the farm at saturation (all submitted at once):
    engine RTF both ways; the farm's overhead is the part of each worker's busy window (first start to last
    finish) not spent in the engine (`result.rtf` x duration), as a share of the window and in ms per job;
    post-processing (`result.post_s`: loudness, encoding) is reported as its own per-job cost;
(c) jobs per second end to end and the worker idle share: gaps between the end of one job's engine work (its
    start plus its engine and post-processing time: the upload and completion run behind the engine, so its
    finish often comes after the next start) and the same worker's next start, over the busy window, while the
    queue still held jobs; full mode also with every job through the QA gate, whose pool shares the machine
    (`gated_idle`);
(d) audio seconds per wall second with 1 worker (the run of (a)) and with 2 (a second worker process added);
    full mode also two bare engine processes without the farm, to tell the machine's scaling from the farm's;
(g) first and later voice clone (job start to finish), and which worker ran each;
(h) a cached duplicate's turnaround (an identical request answered from the dedup cache);
(e) the wall time of a 1,000-line batch, through the QA gate's pool (`voicefarm qa-worker`) as every batch line
    is (--quick: 10 lines and no gate, said so in the table);
(b) API submit latency p50/p99 paced at 100 requests/s with a batch in the backlog (10,000 lines; --quick: 1,000),
    after 200 untimed requests that open the client's and the API's connections;
(j) the engine's graphs (benchmarks/engine_variants.py), before any farm process: RTF per language of the int8
    and the float32 graph, one thread like the workers, same lines alternating (--quick: one line per language);
    the farm's workers then run the one that cost less CPU time on English (`VOICEFARM_KOKORO_GRAPH`), reading
    the float32 graph from the local farm's cache;
(i) streaming speech, with one idle worker: `POST /v1/audio/speech` through the official `openai` client, time to
    the first byte against the whole answer for five sentences and for one (benchmarks/speech_stream.py `measure`,
    medians of 3; --quick: 1), and how long a player starting at the first byte would wait for audio (stall).

Figures depend on the machine and its load: the table prints the load average beside them. It exits non-zero
only when the farm fails (a job failing, a timeout), never because of a figure.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from shared.models import Job, Worker  # noqa: E402
from voicefarm.client.api import Client  # noqa: E402

# Five-second English lines, all different (the saturation figures used lines of this length).
LINE = "Line {i} of the benchmark: the quick brown fox jumps over the lazy dog, and then it runs into the woods."
REFERENCE = "The weather is lovely today, so we are going for a long walk in the park, and then we will have lunch."
ENV = {"VOICEFARM_ENGINE_THREADS": "1"}


@dataclass
class Table:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, section: str, what: str, value: str) -> None:
        self.rows.append((section, what, value))
        print(f"  {section:<4} {what}: {value}", flush=True)

    def render(self) -> str:
        width = max(len(w) for _, w, _ in self.rows)
        out = [f"{'':4} {'figure':<{width}}  value", "-" * (width + 40)]
        out += [f"{s:<4} {w:<{width}}  {v}" for s, w, v in self.rows]
        return "\n".join(out)


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _ts(value: datetime | None) -> float:
    assert value is not None
    return value.timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- the farm's processes ------------------------------------------------------------------------------------


def rss_mb(root_pid: int) -> float:
    """The largest resident set among the worker's processes: the one holding the engine."""
    from tests.support.faultfarm import descendants

    best = 0
    for pid in [root_pid, *descendants(root_pid)]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    best = max(best, int(line.split()[1]))
        except OSError:
            continue
    return best / 1024


def registered(farm: Any) -> int:
    with farm.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Worker)) or 0)


def spawn_worker(farm: Any, name: str, table: Table, timeout: float) -> Any:
    """One more `voicefarm worker --cpu 1`; cold start = spawn until its row is registered (engine loaded)."""
    before = registered(farm)
    started = time.monotonic()
    proc = farm._spawn(name, "worker", "--cpu", "1", env=ENV)
    farm.wait_until(lambda: registered(farm) > before, timeout, f"{name} to register", 0.2)
    table.add("f", f"cold start, {name} (spawn to registered, engine loaded)", f"{time.monotonic() - started:.1f} s")
    return proc


# --- measurements ----------------------------------------------------------------------------------------------


def engine_direct(lines: list[str], engine: Any = None, graph: str = "int8") -> tuple[float, float, Any]:
    """The engine in this process, one thread and the graph like the workers: (wall s, audio s, engine)."""
    from shared.config import Settings
    from worker.engines.kokoro import KokoroEngine

    if engine is None:
        engine = KokoroEngine(Settings(), threads=1, warm_languages=("en",), graph=graph)
        engine.load()
        engine.synthesize("Hello there.", voice="jf_alpha", language="en")
    wall = audio = 0.0
    for text in lines:
        t0 = time.perf_counter()
        out = engine.synthesize(text, voice="jf_alpha", language="en")
        wall += time.perf_counter() - t0
        audio += len(out.audio) / out.sample_rate
    return wall, audio, engine


def _engine_process(lines: list[str], ready: Any, go: Any, out: Any, graph: str) -> None:
    engine = engine_direct(lines[:1], graph=graph)[2]  # loaded and warm before the start line
    ready.put(True)
    go.wait()
    out.put(engine_direct(lines, engine)[:2])


def bare_engines(lines: list[str], processes: int, graph: str) -> float:
    """Audio s per wall s of `processes` engine processes (one thread each) speaking `lines` at once, no farm."""
    import multiprocessing

    mp = multiprocessing.get_context("spawn")
    ready, out, go = mp.Queue(), mp.Queue(), mp.Event()
    procs = [mp.Process(target=_engine_process, args=(lines, ready, go, out, graph)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=300)
    go.set()
    results = [out.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join()
    return sum(audio for _, audio in results) / max(wall for wall, _ in results)


def submit_all(client: Client, lines: list[str], **extra: Any) -> tuple[list[str], float]:
    seed = random.randrange(2**31)  # the dedup cache never answers a line from an earlier run
    t0 = time.time()
    ids = [
        client.submit_job(text, voice="jf_alpha", language="en", seed=seed, format="wav", **extra)["id"]
        for text in lines
    ]
    return ids, t0


def wait_done(farm: Any, ids: list[str], timeout: float) -> list[Job]:
    farm.wait_terminal(ids, timeout=timeout)
    with farm.sessions() as session:
        rows = list(session.scalars(select(Job).where(Job.id.in_(ids))))
    failed = [(r.id, r.status, r.error_code, r.error_message) for r in rows if r.status != "succeeded"]
    if failed:
        raise RuntimeError(f"jobs did not succeed: {failed[:3]}")
    return rows


@dataclass
class Saturation:
    jobs: int
    audio_s: float
    engine_s: float
    post_s: float
    busy_s: float  # sum over workers of first start to last finish
    idle_s: float  # sum over workers of gaps between one job's engine work ending and the next start
    span_s: float  # first start to last finish, all workers
    e2e_s: float  # first submission to last finish
    rate: float  # audio s per wall s at saturation: each worker's audio over its own busy window, summed
    split: list[int]  # jobs per worker


def engine_done(row: Job) -> float:
    """When the job's engine and post-processing work ended, at the earliest: its start plus both. The claim and
    the voice lookup before the engine count as idle, so the share can only be overstated."""
    result = row.result or {}
    return _ts(row.started_at) + float(result["rtf"]) * float(result["duration_s"]) + float(result.get("post_s") or 0)


def saturation(rows: list[Job], submitted_at: float) -> Saturation:
    by_worker: dict[str, list[Job]] = defaultdict(list)
    for row in rows:
        by_worker[str(row.worker)].append(row)
    busy = idle = rate = 0.0
    for jobs in by_worker.values():
        jobs.sort(key=lambda r: _ts(r.started_at))
        window = _ts(jobs[-1].finished_at) - _ts(jobs[0].started_at)
        busy += window
        idle += sum(max(0.0, _ts(b.started_at) - engine_done(a)) for a, b in zip(jobs, jobs[1:], strict=False))
        rate += sum(float((r.result or {})["duration_s"]) for r in jobs) / window
    results = [r.result or {} for r in rows]
    audio = sum(float(r["duration_s"]) for r in results)
    return Saturation(
        jobs=len(rows),
        audio_s=audio,
        engine_s=sum(float(r["rtf"]) * float(r["duration_s"]) for r in results),
        post_s=sum(float(r.get("post_s") or 0) for r in results),
        busy_s=busy,
        idle_s=idle,
        span_s=max(_ts(r.finished_at) for r in rows) - min(_ts(r.started_at) for r in rows),
        e2e_s=max(_ts(r.finished_at) for r in rows) - submitted_at,
        rate=rate,
        split=sorted((len(jobs) for jobs in by_worker.values()), reverse=True),
    )


def gated_idle(rows: list[Job]) -> tuple[float, int]:
    """The engine's idle share when every job passes the QA gate: a job's row then ends when its check does, so each
    engine window is the last take's, from the attempt's start to the end of its engine work (`engine_done`), on
    the worker that spoke it. An earlier take of a re-taken job is missing from its worker's windows and counts as
    idle: the share can only be overstated. Returns (idle share, jobs re-taken)."""
    by_worker: dict[str, list[tuple[float, float]]] = defaultdict(list)
    retaken = 0
    for row in rows:
        last = (row.qa_takes or [{}])[-1]
        retaken += len(row.qa_takes or []) > 1
        by_worker[str(last["worker"])].append((_ts(row.started_at), engine_done(row)))
    busy = idle = 0.0
    for windows in by_worker.values():
        windows.sort()
        busy += windows[-1][1] - windows[0][0]
        idle += sum(max(0.0, b[0] - a[1]) for a, b in zip(windows, windows[1:], strict=False))
    return idle / busy, retaken


def clone(client: Client, farm: Any, wav: bytes, name: str) -> str:
    form = {"transcript": REFERENCE, "name": name, "consent_attested": "true"}  # the farm's tenant attests
    response = client.request("POST", "/v1/voices", data=form, files={"audio": ("ref.wav", wav)})
    return str(response["job_id"])


def clone_times(farm: Any, job_ids: list[str], timeout: float) -> list[tuple[float, str]]:
    rows = wait_done(farm, job_ids, timeout)
    order = {job_id: i for i, job_id in enumerate(job_ids)}
    rows.sort(key=lambda r: order[r.id])
    return [(_ts(r.finished_at) - _ts(r.started_at), str(r.worker)) for r in rows]


def paced_submits(client: Client, rate: float, count: int, warmup: int = 0) -> list[float]:
    """POST /v1/jobs at `rate` per second on a fixed schedule (not a burst); each request's latency in ms. The
    first `warmup` requests run on the same schedule but are not counted: they open the client's connections and
    the API's database connections, which a running farm holds already."""
    latencies: list[float] = []
    lock = threading.Lock()
    seed = random.randrange(2**31)
    start = time.monotonic() + 0.2
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=16)
    session.mount("http://", adapter)
    headers = {"Authorization": f"Bearer {client.key}"}

    def send(i: int) -> None:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t0 = time.perf_counter()
        body: dict[str, Any] = {"text": f"Paced request {i} {uuid.uuid4().hex[:6]}.", "seed": seed, "format": "wav"}
        response = session.post(f"{client.url}/v1/jobs", json=body, headers=headers, timeout=30)
        elapsed = (time.perf_counter() - t0) * 1000
        if response.status_code != 202:
            raise RuntimeError(f"submit {i}: {response.status_code} {response.text[:200]}")
        if i >= warmup:
            with lock:
                latencies.append(elapsed)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        for future in [pool.submit(send, i) for i in range(warmup + count)]:
            future.result()
    return latencies


def engine_graphs(quick: bool, table: Table) -> str:
    """(j): RTF per language of each graph in this process; returns the graph the farm's workers will run."""
    from benchmarks.engine_variants import compare
    from shared.config import Settings
    from worker.engines.kokoro.variants import decide

    figures = compare(threads=1, rounds=1, lines=1 if quick else 3, data_dir=Settings().data_dir)
    for language, by_graph in figures.items():
        table.add("j", f"engine RTF per graph, {language} (1 thread, in-process, same lines; CPU s per audio s)",
                  " / ".join(f"{graph} {f.rtf:.3f} ({f.cpu_rtf:.3f})" for graph, f in by_graph.items()))  # fmt: skip
    graph = decide({name: f.cpu_rtf for name, f in figures["en"].items()})
    table.add("j", "graph the farm's workers run (the cheaper in CPU time on English)", graph)
    return graph


def run(quick: bool, table: Table) -> None:
    from tests.support.faultfarm import FaultFarm

    n_lines = 3 if quick else 18
    n_batch = 10 if quick else 1000
    n_backlog = 1000 if quick else 10_000
    n_paced = 200 if quick else 1000
    if not quick:
        # (a) the engine's onnxruntime session before and after tuning, same lines, alternating, before any farm
        # process runs (benchmarks/kokoro_rtf.py, docs/benchmarks/onnxruntime-tuning.md)
        from benchmarks.kokoro_rtf import compare

        by = {t.config: t for t in compare(threads=os.cpu_count() or 1, rounds=2)}
        before, after = by["before"], by["after"]
        same = "identical" if after.identical else "DIFFERS"
        table.add("a", f"engine RTF before / after session tuning ({os.cpu_count()} threads, in-process)",
                  f"{before.rtf:.3f} / {after.rtf:.3f} (audio {same})")  # fmt: skip
    env = ENV | {"VOICEFARM_KOKORO_GRAPH": engine_graphs(quick, table)}
    logs = Path(tempfile.mkdtemp(prefix="vf-bench-"))
    print(f"bench: logs in {logs}; load average {load()} on {os.cpu_count()} cores", flush=True)
    farm = FaultFarm(logs, worker_cpu=1, api_workers=2, extra_env=env)  # 2 API processes, as `voicefarm up`
    extra: list[Any] = []
    try:
        farm.start_services()
        farm.start_reconciler()
        farm.start_api()
        # Batch lines pass the QA gate (Whisper and speaker checks) on their own pool, as in `voicefarm up`; it
        # starts first so that its model load is not inside any figure but the first worker's cold start. --quick
        # leaves the gate out (it would take most of CI's three minutes; its cost per take is
        # docs/benchmarks/qa-gate.md).
        if not quick:
            farm.start_qa_worker()
        client = Client(farm.url, farm.key, timeout=60)
        farm.worker = spawn_worker(farm, "worker-1", table, 300)
        warm = client.submit_job("Hi.", format="wav")
        client.wait_job(warm["id"], timeout=300)
        table.add("f", "worker memory (RSS of the engine process, warm)", f"{rss_mb(farm.worker.pid):.0f} MB")

        # (i) streaming speech while the one worker is idle (docs/benchmarks/streaming.md)
        from benchmarks.speech_stream import measure

        for figures in measure(farm.url, farm.key, rounds=1 if quick else 3):
            table.add("i", f"speech stream, {figures.label} ({figures.chars} characters)", figures.line())

        # (a), (c), (d) with one worker
        lines = [LINE.format(i=i) for i in range(n_lines)]
        direct_wall, direct_audio, engine = engine_direct(lines, graph=env["VOICEFARM_KOKORO_GRAPH"])
        table.add("a", f"engine RTF, called directly ({n_lines} lines, 1 thread)", f"{direct_wall / direct_audio:.3f}")
        ids, submitted = submit_all(client, lines)
        one = saturation(wait_done(farm, ids, 900), submitted)
        table.add("a", "engine RTF, through the farm (same lines, engine time from job records)",
                  f"{one.engine_s / one.audio_s:.3f}")  # fmt: skip
        table.add("a", "worker wall RTF through the farm (busy window / audio)", f"{one.busy_s / one.audio_s:.3f}")
        overhead = one.busy_s - one.engine_s - one.post_s
        table.add("a", "farm overhead at saturation, share of worker wall time (excl. post-processing)",
                  f"{100 * overhead / one.busy_s:.2f} %")  # fmt: skip
        table.add("a", "farm overhead per job (excl. post-processing)", f"{1000 * overhead / one.jobs:.0f} ms")
        table.add("a", "post-processing per job (loudness, encode)", f"{1000 * one.post_s / one.jobs:.0f} ms")
        table.add("c", "jobs per second end to end, 1 worker (first submit to last finish)",
                  f"{one.jobs / one.e2e_s:.3f} jobs/s")  # fmt: skip
        table.add(
            "c", "worker idle share while the queue held jobs, 1 worker", f"{100 * one.idle_s / one.busy_s:.2f} %"
        )
        table.add("d", "audio s per wall s, 1 worker process", f"{one.rate:.3f}")

        # (d), (c) with two workers; the second worker's cold start and memory
        second = spawn_worker(farm, "worker-2", table, 300)
        extra.append(second)
        ids, submitted = submit_all(client, [LINE.format(i=100 + i) for i in range(2 * n_lines)])
        two = saturation(wait_done(farm, ids, 900), submitted)
        table.add("f", "worker memory, worker-2 (after its jobs)", f"{rss_mb(second.pid):.0f} MB")
        # At saturation: each worker's audio over its own busy window, summed. Over the whole span instead, the
        # last job of the worker that drew more of them counts as if both were working (shown beside).
        table.add("d", "audio s per wall s, 2 worker processes (each worker's rate while busy, summed)",
                  f"{two.rate:.3f} (jobs per worker {'/'.join(map(str, two.split))})")  # fmt: skip
        spans = (two.audio_s / two.span_s) / (one.audio_s / one.span_s)
        table.add("d", "2 workers vs 1 (audio s per wall s at saturation; over the whole span)",
                  f"{two.rate / one.rate:.2f}x; {spans:.2f}x")  # fmt: skip
        if not quick:
            # The machine's own scaling: two engines in two bare processes, no farm, same lines
            graph = env["VOICEFARM_KOKORO_GRAPH"]
            alone, pair = bare_engines(lines, 1, graph), bare_engines(lines, 2, graph)
            table.add("d", "bare engine processes without the farm, 2 vs 1 (audio s per wall s)",
                      f"{pair / alone:.2f}x ({alone:.3f} -> {pair:.3f})")  # fmt: skip
        table.add("c", "jobs per second end to end, 2 workers", f"{two.jobs / two.e2e_s:.3f} jobs/s")
        table.add(
            "c", "worker idle share while the queue held jobs, 2 workers", f"{100 * two.idle_s / two.busy_s:.2f} %"
        )
        if not quick:
            # The same with every job through the QA gate, whose pool shares the machine: do the gaps grow?
            ids, _ = submit_all(client, [LINE.format(i=200 + i) for i in range(2 * n_lines)], qa=True)
            share, retaken = gated_idle(wait_done(farm, ids, 1800))
            table.add("c", "worker idle share while the queue held jobs, 2 workers, every job through the QA gate",
                      f"{100 * share:.2f} % ({retaken} of {2 * n_lines} re-taken)")  # fmt: skip
        overhead2 = two.busy_s - two.engine_s - two.post_s
        table.add("a", "farm overhead at saturation, 2 workers (share / per job)",
                  f"{100 * overhead2 / two.busy_s:.2f} % / {1000 * overhead2 / two.jobs:.0f} ms")  # fmt: skip

        # (g) clones: the first renders the stock voices' calibration (and stores it); the next two run at once,
        # one on each worker, so the worker that never cloned loads it from S3
        import soundfile as sf

        reference = engine.synthesize(REFERENCE, voice="jm_kumo", language="en")
        buffer = io.BytesIO()
        sf.write(buffer, reference.audio, reference.sample_rate, format="WAV")
        wav = buffer.getvalue()
        del engine
        first = clone_times(farm, [clone(client, farm, wav, "bench-first")], 900)[0]
        table.add("g", "first voice clone on a fresh farm (job run time; renders the calibration)",
                  f"{first[0]:.1f} s on {first[1]}")  # fmt: skip
        later = clone_times(farm, [clone(client, farm, wav, f"bench-{i}") for i in range(2)], 900)
        for seconds, worker in later:
            what = "later clone, same worker" if worker == first[1] else "later clone, a worker that never cloned"
            table.add("g", what, f"{seconds:.1f} s on {worker}")

        # (h) a cached duplicate: the same request as a succeeded job
        done = client.submit_job("A line for the dedup cache.", voice="jf_alpha", seed=7, format="wav")
        client.wait_job(done["id"], timeout=300)
        turnaround = []
        for _ in range(20):
            t0 = time.perf_counter()
            hit = client.submit_job("A line for the dedup cache.", voice="jf_alpha", seed=7, format="wav")
            turnaround.append((time.perf_counter() - t0) * 1000)
            if hit["status"] != "succeeded":
                raise RuntimeError(f"duplicate was not answered from the cache: {hit}")
        table.add("h", "cached duplicate turnaround (POST answered succeeded), median / max of 20",
                  f"{statistics.median(turnaround):.1f} / {max(turnaround):.1f} ms")  # fmt: skip

        # (e) a batch (its lines pass the QA gate, whose pool started with the farm)
        started = time.monotonic()
        lines_e = [{"id": f"e{i:04d}", "text": f"Line {i}."} for i in range(n_batch)]
        batch = client.create_batch(lines_e, defaults={"seed": random.randrange(2**31), "qa": not quick}, name="bench")
        farm.wait_until(lambda: bool(client.get_batch(batch["id"])["done"]), 300 if quick else 7200, "the batch", 1.0)
        wall = time.monotonic() - started
        view = client.get_batch(batch["id"])
        if view["counts"].get("succeeded") != n_batch:
            raise RuntimeError(f"batch: {view['counts']} of {n_batch} lines")
        label = f"{n_batch}-line batch" + (" (--quick: not 1,000 lines, no QA gate)" if quick else ", QA gate on")
        table.add("e", f"wall time of a {label}, 2 workers, submit to last line",
                  f"{wall:.1f} s ({n_batch / wall:.2f} lines/s, {view['audio_seconds']:.0f} s of audio)")  # fmt: skip
        if not quick:
            with farm.sessions() as session:
                verdicts = [
                    r.result.get("qa") or {} for r in session.scalars(select(Job).where(Job.batch_id == batch["id"]))
                ]
            takes = sum(int(v.get("takes") or 1) for v in verdicts)
            review = sum(bool(v.get("needs_review")) for v in verdicts)
            table.add("e", "QA gate on that batch: takes per line / lines marked needs_review",
                      f"{takes / n_batch:.2f} / {review}")  # fmt: skip

        # (b) submit latency with a backlog
        backlog = [{"id": f"q{i:05d}", "text": f"Backlog line {i}."} for i in range(n_backlog)]
        client.create_batch(backlog, defaults={"seed": random.randrange(2**31), "qa": not quick}, name="backlog")
        warmup = 50 if quick else 200
        latencies = paced_submits(client, 100.0, n_paced, warmup=warmup)
        table.add("b", f"submit latency at 100 req/s, {n_paced} after {warmup} untimed, {n_backlog}-line batch queued",
                  f"p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms")  # fmt: skip
        table.add("", "load average (1/5/15 min) at the end", load())
    finally:
        from tests.support.faultfarm import kill9_tree

        for proc in extra:
            kill9_tree(proc)
        farm.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer lines: under 3 minutes, for CI")
    args = parser.parse_args(argv)
    table = Table()
    started = time.monotonic()
    table.add("", "mode", "quick (CI sizes)" if args.quick else "full")
    table.add("", "machine", f"{os.cpu_count()} cores; load average (1/5/15 min) at the start {load()}")
    try:
        run(args.quick, table)
    except Exception as exc:  # the farm broke: say what, print what was measured, fail
        print(table.render())
        print(f"bench: FAILED after {time.monotonic() - started:.0f} s: {exc!r}", file=sys.stderr)
        return 1
    table.add("", "bench wall time", f"{time.monotonic() - started:.0f} s")
    print()
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
