"""A noisy neighbour against a whole farm: what tenant A's flood costs tenant B. Figures:
docs/benchmarks/noisy-neighbour.md.

    .venv/bin/python benchmarks/noisy_neighbour.py [--flood-s 120] [--json out.json]

It starts a farm of its own on loopback (tests/support/faultfarm.py, as benchmarks/farm_bench.py does: PostgreSQL,
Redis and SeaweedFS on free ports, `voicefarm api` with 2 gunicorn processes, `voicefarm worker --cpu 2` with one
intra-op thread per engine, `voicefarm reconcile`; no QA pool, and every line asks `qa: false`). After a warm-up
(one job, and one clone that renders the stock voices' calibration, so neither is inside the figures), for
`--flood-s` seconds:

- tenant A floods: `--streams` threads (default 6, past the default cap of 4 open streams) each send
  `POST /v1/audio/speech` with a short new sentence, read the whole answer and send the next (after 0.2 s on a
  refusal); one 10,000-line batch of short lines (`Line 17.`) is posted at the start; one thread re-renders the
  batch's first line with a new seed every 0.5 s; one thread posts a clone (`POST /v1/voices`, a 6 s reference
  clip the farm spoke itself) every second;
- tenant B submits one short job at a time (`POST /v1/jobs`), polls it until it ends, and submits the next;
- a prober asks `GET /healthz` every 0.1 s, each on a new connection.

Reported: B's queue wait (`started_at - created_at` from the job rows) median / p95 / max and how many of B's jobs
ran, `/healthz` p50 / p99 / max, the API processes' peak RSS (`VmHWM` of each gunicorn worker, reset through
`/proc/<pid>/clear_refs` when the flood starts), and what A's requests were answered. When the flood ends A's threads
stop, its batch is canceled and B's last job is waited for (its wait counts: it waited through the flood).

The script runs against whichever tree it sits in (it reads the job rows with plain SQL and uses only the HTTP API
and the FaultFarm helpers, tests/support/faultfarm.py or an older tree's tests/faultfarm.py), so the same file
measures an older commit from a `git worktree` of it: docs/benchmarks/noisy-neighbour.md says how.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
import wave
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from sqlalchemy import text  # noqa: E402

from shared import tenants  # noqa: E402
from shared.db import transaction  # noqa: E402
from shared.provenance import consent  # noqa: E402

try:
    from tests.support.faultfarm import FaultFarm, descendants
except ImportError:  # a tree from before tests/support/ (the "before" run)
    from tests.faultfarm import FaultFarm, descendants  # type: ignore[no-redef]

ENV = {"VOICEFARM_ENGINE_THREADS": "1"}
REFERENCE = "The weather is lovely today, so we are going for a long walk in the park, and then we will have lunch."
TERMINAL = ("succeeded", "failed", "canceled")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def code_of(response: requests.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def answer(response: requests.Response) -> str:
    """`202`, or `429 too_many_streams`: a status and, for an error, its code."""
    code = code_of(response) if response.status_code >= 400 else ""
    return f"{response.status_code} {code}".strip()


def new_key(farm: Any, tenant: str) -> tuple[str, str]:
    with transaction(farm.sessions) as session:
        row, plaintext = tenants.create_key(session, tenant)
        consent.set_policy_by_id(session, row.tenant_id, consent.ATTESTED)  # its clones assert consent
        return row.tenant_id, plaintext


def wait_job(url: str, key: str, job_id: str, deadline: float) -> dict[str, Any]:
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = requests.get(f"{url}/v1/jobs/{job_id}", headers=auth(key), timeout=30)
        body = response.json()
        if body.get("status") in TERMINAL:
            return body
        time.sleep(0.2)
    return body


def reference_clip(farm: Any, key: str) -> bytes:
    """A reference clip of 3-30 s for the clone flood, spoken by the farm itself (kokoro)."""
    response = requests.post(
        f"{farm.url}/v1/jobs", json={"text": REFERENCE, "format": "wav", "voice": "jm_kumo"}, headers=auth(key)
    )
    assert response.status_code == 202, response.text
    job = wait_job(farm.url, key, response.json()["id"], time.monotonic() + 300)
    assert job.get("status") == "succeeded", job
    audio = requests.get(f"{farm.url}/v1/jobs/{job['id']}/audio", headers=auth(key), timeout=60).content
    with wave.open(io.BytesIO(audio)) as clip:
        assert 3 <= clip.getnframes() / clip.getframerate() <= 30
    return audio


def gunicorn_workers(master: int) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
        if len(children) >= 2:
            return children
        time.sleep(0.1)
    return descendants(master)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Flood:
    """Tenant A's threads, tenant B's loop and the health prober, all stopped by one event."""

    def __init__(self, farm: Any, a_key: str, b_key: str, wav: bytes, streams: int) -> None:
        self.url, self.a, self.b, self.wav, self.streams = farm.url, a_key, b_key, wav, streams
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.speech: Counter[str] = Counter()
        self.speech_s: list[float] = []
        self.clones: Counter[str] = Counter()
        self.rerenders: Counter[str] = Counter()
        self.health_s: list[float] = []
        self.health_failed = 0
        self.b_jobs: list[str] = []
        self.b_answers: Counter[str] = Counter()
        self.batch: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def start(self, lines: int) -> None:
        for i in range(self.streams):
            self._thread(self._speech, i)
        self._thread(self._batch_and_rerenders, lines)
        self._thread(self._clones)
        self._thread(self._tenant_b)
        self._thread(self._health)

    def _thread(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _count(self, counter: Counter[str], what: str) -> None:
        with self.lock:
            counter[what] += 1

    def _speech(self, thread: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            body = {
                "model": "tts-1",
                "voice": "alloy",
                "input": f"Stream {thread} says sentence {n} {uuid.uuid4().hex[:6]}.",
            }
            started = time.monotonic()
            try:
                response = requests.post(f"{self.url}/v1/audio/speech", json=body, headers=auth(self.a), timeout=120)
                _ = response.content  # the whole answer, as a client would play it
            except requests.RequestException as exc:
                self._count(self.speech, type(exc).__name__)
                continue
            took = time.monotonic() - started
            self._count(self.speech, answer(response))
            if response.status_code == 200:
                with self.lock:
                    self.speech_s.append(took)
            if response.status_code != 200:
                self.stop.wait(0.2)

    def _batch_and_rerenders(self, lines: int) -> None:
        seed = int.from_bytes(os.urandom(3), "big")  # no line is a dedup hit from an earlier run
        payload: dict[str, Any] = {
            "name": "flood",
            "defaults": {"qa": False, "format": "wav", "seed": seed},
            "lines": [{"id": f"l{i}", "text": f"Line {i}."} for i in range(lines)],
        }
        started = time.monotonic()
        response = requests.post(f"{self.url}/v1/batches", json=payload, headers=auth(self.a), timeout=300)
        self.batch = {"answer": answer(response), "seconds": time.monotonic() - started}
        if response.status_code not in (200, 202):
            return
        self.batch["id"] = response.json()["id"]
        n = 0
        while not self.stop.wait(0.5):
            n += 1
            try:
                again = requests.post(
                    f"{self.url}/v1/batches/{self.batch['id']}/lines/l0",
                    json={"seed": seed + n},
                    headers=auth(self.a),
                    timeout=60,
                )
                self._count(self.rerenders, answer(again))
            except requests.RequestException as exc:
                self._count(self.rerenders, type(exc).__name__)

    def _clones(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                response = requests.post(
                    f"{self.url}/v1/voices",
                    files={"audio": ("reference.wav", self.wav, "audio/wav")},
                    data={"name": f"flood-{n}", "transcript": REFERENCE, "consent_attested": "true"},
                    headers=auth(self.a),
                    timeout=60,
                )
                self._count(self.clones, answer(response))
            except requests.RequestException as exc:
                self._count(self.clones, type(exc).__name__)
            self.stop.wait(1.0)

    def _tenant_b(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                response = requests.post(
                    f"{self.url}/v1/jobs",
                    json={"text": f"Tenant B asks for line {n}, {uuid.uuid4().hex[:6]}.", "format": "wav"},
                    headers=auth(self.b),
                    timeout=60,
                )
            except requests.RequestException as exc:
                self._count(self.b_answers, type(exc).__name__)
                continue
            self._count(self.b_answers, answer(response))
            if response.status_code not in (200, 202):
                self.stop.wait(0.5)
                continue
            job_id = response.json()["id"]
            self.b_jobs.append(job_id)
            # B's last job is waited for after the flood too (in run()), so its wait counts in full.
            while not self.stop.is_set():
                try:
                    body = requests.get(f"{self.url}/v1/jobs/{job_id}", headers=auth(self.b), timeout=30).json()
                except (requests.RequestException, ValueError):
                    body = {}
                if body.get("status") in TERMINAL:
                    break
                self.stop.wait(0.2)

    def _health(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with requests.Session() as fresh:  # a new connection each time, as a load balancer's probe
                    ok = fresh.get(f"{self.url}/healthz", timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            took = time.monotonic() - started
            with self.lock:
                if ok:
                    self.health_s.append(took)
                else:
                    self.health_failed += 1
            self.stop.wait(max(0.0, 0.1 - took))

    def finish(self, timeout: float) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))


def job_rows(farm: Any, tenant_id: str) -> list[dict[str, Any]]:
    query = text(
        "SELECT id, kind, status, batch_id, created_at, started_at, finished_at FROM jobs WHERE tenant_id = :t"
    )
    with farm.sessions() as session:
        return [dict(row._mapping) for row in session.execute(query, {"t": tenant_id})]


def run(args: argparse.Namespace) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="vf-noisy-"))
    print(f"noisy-neighbour: tree {ROOT}, logs in {logs}; load average {load()} on {os.cpu_count()} cores", flush=True)
    farm = FaultFarm(logs, worker_cpu=2, api_workers=2, extra_env=ENV)
    figures: dict[str, Any] = {"tree": str(ROOT), "cores": os.cpu_count(), "load_start": load()}
    try:
        farm.start_services()
        farm.start_reconciler()
        farm.start_api()
        farm.start_worker()
        farm.wait_workers_ready(300)
        _setup, setup_key = new_key(farm, "setup")
        a_tenant, a_key = new_key(farm, "tenant-a")
        b_tenant, b_key = new_key(farm, "tenant-b")
        wav = reference_clip(farm, setup_key)
        # The first clone renders the stock voices' calibration (about 30 s on two cores): before the flood.
        first = requests.post(
            f"{farm.url}/v1/voices",
            files={"audio": ("reference.wav", wav, "audio/wav")},
            data={"name": "warm-up", "transcript": REFERENCE, "consent_attested": "true"},
            headers=auth(setup_key),
            timeout=60,
        )
        assert first.status_code in (200, 201, 202), first.text
        wait_job(farm.url, setup_key, first.json()["job_id"], time.monotonic() + 300)
        # Warm both workers and both API processes on B's path.
        for i in range(4):
            warm = requests.post(
                f"{farm.url}/v1/jobs", json={"text": f"Warm {i}.", "format": "wav"}, headers=auth(setup_key)
            )
            wait_job(farm.url, setup_key, warm.json()["id"], time.monotonic() + 120)

        assert farm.api is not None
        workers = gunicorn_workers(farm.api.pid)
        for pid in workers:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM back to the current RSS
        rss_start = {pid: status_kib(pid, "VmRSS") for pid in workers}
        flood = Flood(farm, a_key, b_key, wav, args.streams)
        print(f"flood: {args.flood_s:.0f} s, load average {load()}", flush=True)
        started = time.monotonic()
        flood.start(args.lines)
        time.sleep(args.flood_s)
        hwm = {pid: status_kib(pid, "VmHWM") for pid in workers}
        figures["load_end"] = load()
        flood.stop.set()
        if flood.batch.get("id"):
            requests.post(f"{farm.url}/v1/batches/{flood.batch['id']}/cancel", headers=auth(a_key), timeout=60)
        flood.finish(180)
        if flood.b_jobs:  # B's last job, waited for in full
            wait_job(farm.url, b_key, flood.b_jobs[-1], time.monotonic() + 300)
        elapsed = time.monotonic() - started

        b_rows = [r for r in job_rows(farm, b_tenant) if r["id"] in set(flood.b_jobs)]
        waits = [(r["started_at"] - r["created_at"]).total_seconds() for r in b_rows if r["started_at"] is not None]
        # A job of B's still waiting when the script gives up counts with the wait it has had so far (a lower bound).
        now = datetime.now(UTC)
        unstarted = [
            (now - r["created_at"].replace(tzinfo=r["created_at"].tzinfo or UTC)).total_seconds()
            for r in b_rows
            if r["started_at"] is None
        ]
        waits += unstarted
        turnaround = [
            (r["finished_at"] - r["created_at"]).total_seconds()
            for r in b_rows
            if r["finished_at"] is not None and r["status"] == "succeeded"
        ]
        a_rows = job_rows(farm, a_tenant)
        a_kinds = Counter(f"{'batch line' if r['batch_id'] else r['kind']} {r['status']}" for r in a_rows)
        figures |= {
            "flood_s": args.flood_s,
            "wall_s": round(elapsed, 1),
            "b_jobs": len(flood.b_jobs),
            "b_started": len(waits) - len(unstarted),
            "b_never_started": len(unstarted),
            "b_answers": dict(flood.b_answers),
            "b_wait_median_s": round(statistics.median(waits), 2) if waits else None,
            "b_wait_p95_s": round(pct(waits, 0.95), 2) if waits else None,
            "b_wait_max_s": round(max(waits), 2) if waits else None,
            "b_turnaround_median_s": round(statistics.median(turnaround), 2) if turnaround else None,
            "healthz_n": len(flood.health_s),
            "healthz_failed": flood.health_failed,
            "healthz_p50_ms": round(1000 * pct(flood.health_s, 0.5), 1),
            "healthz_p99_ms": round(1000 * pct(flood.health_s, 0.99), 1),
            "healthz_max_ms": round(1000 * max(flood.health_s), 1) if flood.health_s else None,
            "api_rss_start_mib": [round(rss_start[p] / 1024, 1) for p in workers],
            "api_peak_rss_mib": [round(hwm[p] / 1024, 1) for p in workers],
            "a_speech": dict(flood.speech),
            "a_speech_200_median_s": round(statistics.median(flood.speech_s), 2) if flood.speech_s else None,
            "a_batch": flood.batch,
            "a_rerenders": dict(flood.rerenders),
            "a_clones": dict(flood.clones),
            "a_jobs": dict(a_kinds),
        }
        return figures
    finally:
        farm.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood-s", type=float, default=120.0, help="how long tenant A floods (seconds)")
    parser.add_argument("--streams", type=int, default=6, help="tenant A's concurrent speech streams")
    parser.add_argument("--lines", type=int, default=10_000, help="lines of tenant A's batch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = run(args)
    print("\nnoisy-neighbour figures")
    for name, value in figures.items():
        print(f"  {name}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
