"""DESIGN.md §5 with real processes: nothing lost, nothing duplicated through a worker kill -9, a Redis restart
that drops its data, a PostgreSQL outage, an S3 outage and an API restart.

Each test owns its services (tests/faultfarm.py) so it can break them, and runs `voicefarm api`, `voicefarm
worker --cpu 1` and `voicefarm reconcile` (2 s interval, 10 s leases) as subprocesses. Every test ends with the
same check: every job the API accepted succeeded exactly once, with one row and one S3 object of its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faultfarm import FaultFarm, Submission, log

pytestmark = pytest.mark.slow

SHORT = ["Hi.", "Good morning.", "Yes.", "Thank you.", "See you.", "Okay.", "Hello there.", "Fine."]
# About ten seconds of speech in several segments: long enough to be caught running and killed.
LONG = (
    "The farm keeps every job in its database. A worker that dies in the middle of a job loses nothing. "
    "Its lease runs out, the reconciler puts the job back in the queue, and another worker speaks it again. "
    "The listener never notices."
)


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[FaultFarm]:
    farm = FaultFarm(tmp_path)
    try:
        farm.start_all()
        yield farm
    finally:
        farm.stop_all()


def submit_all(farm: FaultFarm, texts: list[str]) -> list[str]:
    ids = []
    for text in texts:
        sub = farm.submit(text)
        assert sub.status == 202, sub
        ids.append(sub.job_id)
    return ids


def test_worker_killed_mid_job(farm: FaultFarm) -> None:
    long_id, *short_ids = submit_all(farm, [LONG, *SHORT[:4]])
    farm.wait_until(lambda: farm.jobs([long_id])[long_id]["status"] == "running", 60, "the long job to run", 0.02)
    killed_at = time.time()
    pids = farm.kill9_worker()
    job = farm.jobs([long_id])[long_id]
    # Still running in the database: the kill really happened mid-job.
    assert job["status"] == "running" and job["attempts"] == 1, job
    log(f"killed worker processes {pids} with job {long_id} running")
    farm.start_worker()
    rows = farm.assert_exactly_once([long_id, *short_ids])
    recovered = rows[long_id]["finished_at"].timestamp() - killed_at
    log(f"long job succeeded {recovered:.1f}s after the kill, attempts={rows[long_id]['attempts']}")
    assert rows[long_id]["attempts"] >= 2
    assert all(rows[i]["attempts"] == 1 for i in short_ids), rows


def test_redis_restarted_without_its_data(farm: FaultFarm) -> None:
    farm.stop_worker()
    ids = submit_all(farm, SHORT[:6])
    assert all(j["status"] == "queued" for j in farm.jobs(ids).values())
    assert farm.redis.dbsize() > 0
    submitted = time.monotonic()
    farm.redis.restart_empty()
    assert farm.redis.dbsize() == 0
    log("redis restarted empty with 6 jobs queued")
    # The API reconnects to the new Redis; these are sent to it directly.
    ids += submit_all(farm, SHORT[6:8])
    farm.start_worker()
    farm.assert_exactly_once(ids)
    log(f"all {len(ids)} jobs succeeded {time.monotonic() - submitted:.1f}s after the restart")


class Client(threading.Thread):
    """Submits a short job every `interval` seconds, each with an Idempotency-Key of its own, until stopped."""

    def __init__(self, farm: FaultFarm, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.farm, self.interval = farm, interval
        self.results: list[tuple[float, Submission]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            sub = self.farm.submit(SHORT[i % len(SHORT)], key=f"client-{uuid.uuid4().hex[:12]}", timeout=20)
            self.results.append((time.monotonic(), sub))
            i += 1
            self.stop.wait(self.interval)

    def retry_rejected(self, deadline_s: float = 60) -> list[Submission]:
        """Send every submission that got no 2xx again, with the same key, until it is accepted."""
        retried = []
        deadline = time.monotonic() + deadline_s
        for _, sub in self.results:
            if sub.status in (200, 202):
                continue
            text = SHORT[[s for _, s in self.results].index(sub) % len(SHORT)]
            while True:
                again = self.farm.submit(text, key=sub.key)
                if again.status in (200, 202) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert again.status in (200, 202), again
            retried.append(again)
        return retried


def test_postgres_outage(farm: FaultFarm) -> None:
    client = Client(farm)
    client.start()
    time.sleep(3)
    down_at = time.monotonic()
    farm.pg.pause()
    log("postgres stopped")
    time.sleep(10)
    farm.pg.resume()
    up_at = time.monotonic()
    log(f"postgres back after {up_at - down_at:.1f}s")
    time.sleep(4)
    client.stop.set()
    client.join(30)

    during = [s for t, s in client.results if down_at + 0.5 < t - s.seconds and t < up_at]
    codes = sorted({(s.status, s.code) for _, s in client.results})
    log(f"{len(client.results)} submissions; answers (status, code): {codes}")
    assert during, "no submission during the outage"
    assert all(s.status == 503 and s.code == "database_unavailable" for s in during), [
        (s.status, s.code) for s in during
    ]
    assert all("json" in s.content_type for s in during)
    slowest = max(s.seconds for _, s in client.results)
    log(f"during the outage: {len(during)} answers 503, slowest answer of all {slowest:.2f}s")
    assert slowest < 10
    assert not [s for _, s in client.results if s.status not in (202, 503)], codes

    retried = client.retry_rejected()
    log(f"{len(retried)} rejected submissions retried with their Idempotency-Key and accepted")
    accepted = {s.job_id for _, s in client.results if s.status == 202} | {s.job_id for s in retried}
    assert None not in accepted
    # One job per key: the retries did not create a second one.
    assert len(accepted) == len(client.results)
    farm.assert_exactly_once(accepted)  # type: ignore[arg-type]


def test_s3_outage(farm: FaultFarm) -> None:
    before = submit_all(farm, SHORT[:1])
    farm.wait_terminal(before)
    farm.s3.stop()
    down_at = time.monotonic()
    log("seaweedfs stopped")
    ids = submit_all(farm, SHORT[:6])
    time.sleep(10)
    farm.s3.start()
    log(f"seaweedfs back after {time.monotonic() - down_at:.1f}s")
    rows = farm.assert_exactly_once(before + ids)
    log(f"all succeeded {time.monotonic() - down_at:.1f}s after S3 went away; attempts "
        f"{sorted(r['attempts'] for r in rows.values())}")


def test_api_restart(farm: FaultFarm) -> None:
    client = Client(farm, interval=0.1)
    client.start()
    for _ in range(2):
        time.sleep(2)
        took = farm.stop_api()
        log(f"api stopped by SIGTERM in {took:.1f}s")
        took = farm.start_api()
        log(f"api answering again after {took:.1f}s")
    time.sleep(2)
    client.stop.set()
    client.join(30)
    codes = sorted({(s.status, s.code) for _, s in client.results})
    log(f"{len(client.results)} submissions; answers (status, code): {codes}")
    assert not [s for _, s in client.results if s.status not in (0, 202)], codes
    retried = client.retry_rejected()
    accepted = {s.job_id for _, s in client.results if s.status == 202} | {s.job_id for s in retried}
    assert len(accepted) == len(client.results)
    farm.assert_exactly_once(accepted)  # type: ignore[arg-type]
