"""Bounded load test of a running farm: submit N short jobs, wait for them, count what was lost or duplicated.

    .venv/bin/python benchmarks/load.py --url http://127.0.0.1:7860 --key-file var/api_key \\
        [-n 5000] [--concurrency 16] [--deadline 1200] \\
        [--database-url postgresql://...] [--s3-endpoint http://127.0.0.1:8333 --s3-bucket voicefarm \\
         --s3-access-key ... --s3-secret-key ...] [--json out.json]

Loopback only: the URL must name 127.0.0.1, ::1 or localhost. It stops by itself: at most N submissions (N is
capped at 100000), then polling until every accepted job is terminal or the deadline (counted from the start of
the run) passes. Every submission carries an Idempotency-Key of its own (`load-<run>-<i>`) and a text of one or
two words, so the farm's time goes to queueing and bookkeeping more than to speech.

Reports:
  accepted       answers 202 (a 200 would mean the key was seen before: counted as `replayed`)
  rejected       every other answer, by status (0: no answer at all: refused, reset or timed out)
  succeeded / failed (by error code) / canceled
  lost           accepted but not terminal at the deadline, or missing from the database / the API listing,
                 or succeeded without its S3 object (when S3 settings are given)
  duplicated     with --database-url: jobs beyond the first per Idempotency-Key of this run, and S3 objects
                 beyond one per job (with S3 settings); without it: jobs in the API listing that carry a text
                 of this run, were created during it, and are not among the accepted ids
  latency        submit p50/p99 (request round trip, all answers) and end-to-end p50/p99 (submission start to
                 the job's finished_at, accepted jobs that succeeded)
Polling goes through the database when --database-url is given (one query per round), else through
GET /v1/jobs pages of 200.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
MAX_JOBS = 100_000
TEXTS = ["Hi.", "Yes.", "Okay.", "Thanks.", "Hello there.", "Good night.", "See you.", "Fine."]
TERMINAL = ("succeeded", "failed", "canceled")


@dataclass
class Sent:
    index: int
    key: str
    text: str
    started: float  # wall clock (time.time()) when the request was sent
    seconds: float = 0.0
    status: int = 0
    job_id: str | None = None
    error: str | None = None


@dataclass
class JobState:
    status: str
    finished_at: float | None = None
    error_code: str | None = None


@dataclass
class Outcome:
    sent: list[Sent] = field(default_factory=list)
    states: dict[str, JobState] = field(default_factory=dict)
    submit_wall_s: float = 0.0
    total_wall_s: float = 0.0
    duplicated: dict[str, int] = field(default_factory=dict)
    missing_objects: int = 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def parse_time(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value)).timestamp()


# --- submission ------------------------------------------------------------------------------------------------


class Submitter:
    def __init__(self, url: str, key: str, timeout: float) -> None:
        self.url, self.key, self.timeout = url.rstrip("/"), key, timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        session: requests.Session = self._local.session
        return session

    def submit(self, sent: Sent) -> Sent:
        headers = {"Authorization": f"Bearer {self.key}", "Idempotency-Key": sent.key}
        sent.started = time.time()
        t0 = time.perf_counter()
        try:
            response = self._session().post(
                f"{self.url}/v1/jobs", json={"text": sent.text, "format": "wav"}, headers=headers, timeout=self.timeout
            )
            sent.status = response.status_code
            try:
                body = response.json()
            except ValueError:
                body = {}
            if response.status_code in (200, 202):
                sent.job_id = body.get("id")
            else:
                sent.error = (body.get("error") or {}).get("code")
        except requests.RequestException as exc:
            sent.status, sent.error = 0, type(exc).__name__
        sent.seconds = time.perf_counter() - t0
        return sent


def submit_all(args: argparse.Namespace, key: str, run_id: str, out: Outcome, deadline: float) -> None:
    submitter = Submitter(args.url, key, args.submit_timeout)
    todo = [Sent(i, f"load-{run_id}-{i}", TEXTS[i % len(TEXTS)], 0.0) for i in range(args.n)]
    started = time.monotonic()
    done = 0
    lock = threading.Lock()

    def one(sent: Sent) -> Sent:
        nonlocal done
        if time.monotonic() > deadline:  # out of time: not sent at all
            sent.status, sent.error = -1, "not_sent_deadline"
            return sent
        result = submitter.submit(sent)
        with lock:
            done += 1
            if done % 500 == 0:
                rate = done / (time.monotonic() - started)
                print(f"  submitted {done}/{len(todo)} ({rate:.0f}/s)", flush=True)
        return result

    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        out.sent = list(pool.map(one, todo))
    out.submit_wall_s = time.monotonic() - started


# --- polling ---------------------------------------------------------------------------------------------------


class DatabasePoller:
    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        if url.startswith(("postgresql://", "postgres://")):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        self.engine = create_engine(url, pool_pre_ping=True)

    def poll(self, ids: list[str]) -> dict[str, JobState]:
        from sqlalchemy import bindparam, text

        query = text("SELECT id, status, finished_at, error_code FROM jobs WHERE id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        )
        states: dict[str, JobState] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 5000):
                for row in conn.execute(query, {"ids": ids[start : start + 5000]}):
                    states[row.id] = JobState(row.status, parse_time(row.finished_at), row.error_code)
        return states

    def duplicates(self, keys: list[str]) -> dict[str, int]:
        """Jobs beyond the first per Idempotency-Key of this run (the keys carry a random run id)."""
        from sqlalchemy import bindparam, text

        query = text(
            "SELECT idempotency_key, count(*) AS n FROM jobs WHERE idempotency_key IN :keys "
            "GROUP BY idempotency_key HAVING count(*) > 1"
        ).bindparams(bindparam("keys", expanding=True))
        extra: dict[str, int] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 5000):
                for row in conn.execute(query, {"keys": keys[start : start + 5000]}):
                    extra[row.idempotency_key] = row.n - 1
        return extra

    def tenant(self, job_id: str) -> str:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return str(conn.execute(text("SELECT tenant_id FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one())


class ApiPoller:
    """Pages through GET /v1/jobs (newest first) until every id of ours was seen or the pages run out."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.headers = url.rstrip("/"), {"Authorization": f"Bearer {key}"}
        self.session = requests.Session()
        self.listing: dict[str, dict[str, Any]] = {}

    def poll(self, ids: list[str], oldest: float | None = None) -> dict[str, JobState]:
        wanted, cursor = set(ids), None
        self.listing = {}
        while True:
            params: dict[str, Any] = {"limit": 200}
            if cursor:
                params["cursor"] = cursor
            response = self.session.get(f"{self.url}/v1/jobs", params=params, headers=self.headers, timeout=30)
            if response.status_code == 429:
                time.sleep(float(response.headers.get("Retry-After", "5")))
                continue
            response.raise_for_status()
            page = response.json()
            for job in page["jobs"]:
                self.listing[job["id"]] = job
            cursor = page.get("next_cursor")
            seen_all = wanted <= self.listing.keys()
            too_old = oldest is not None and page["jobs"] and parse_time(page["jobs"][-1]["created_at"]) < oldest  # type: ignore[operator]
            if not cursor or seen_all or too_old:
                break
        return {
            i: JobState(j["status"], parse_time(j.get("finished_at")), (j.get("error") or {}).get("code"))
            for i, j in self.listing.items()
            if i in wanted
        }


def wait_for_jobs(poller: Any, ids: list[str], deadline: float, interval: float, out: Outcome) -> None:
    last_report = 0.0
    while True:
        try:
            out.states = poller.poll(ids)
        except Exception as exc:  # the farm may be busy or briefly down; keep polling until the deadline
            print(f"  poll failed: {type(exc).__name__}: {exc}", flush=True)
        counts = Counter(s.status for s in out.states.values())
        terminal = sum(counts[s] for s in TERMINAL)
        if time.monotonic() - last_report > 30 or terminal == len(ids):
            print(f"  {terminal}/{len(ids)} terminal {dict(counts)}", flush=True)
            last_report = time.monotonic()
        if terminal == len(ids) or time.monotonic() + interval > deadline:
            return
        time.sleep(interval)


def s3_objects(args: argparse.Namespace, tenant_id: str) -> Counter[str]:
    """Objects per job id under jobs/<tenant>/."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=args.s3_endpoint,
        aws_access_key_id=args.s3_access_key,
        aws_secret_access_key=args.s3_secret_key,
        region_name=args.s3_region,
        config=Config(s3={"addressing_style": "path"}),
    )
    per_job: Counter[str] = Counter()
    prefix = f"jobs/{tenant_id}/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=args.s3_bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            per_job[obj["Key"][len(prefix) :].rsplit(".", 1)[0]] += 1
    return per_job


# --- the run ---------------------------------------------------------------------------------------------------


def check_loopback(url: str, what: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"{what} must be on loopback (127.0.0.1, ::1, localhost), not {host!r}")


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[Sent]]:
    key = args.key or Path(args.key_file).read_text().strip()
    out = Outcome()
    started = time.monotonic()
    deadline = started + args.deadline
    if args.resume:
        # Check an earlier run again (its jobs may have finished since): no new submission.
        earlier = json.loads(Path(args.resume).read_text())
        run_id, out.submit_wall_s = earlier["run"], earlier["submit_wall_s"]
        out.sent = [Sent(**s) for s in earlier["submissions"]]
        args.n = len(out.sent)
        print(f"run {run_id} again: {args.n} submissions from {args.resume}, deadline {args.deadline:.0f}s")
    else:
        run_id = uuid.uuid4().hex[:8]
        print(
            f"run {run_id}: {args.n} jobs to {args.url}, concurrency {args.concurrency}, deadline {args.deadline:.0f}s"
        )
        submit_all(args, key, run_id, out, deadline)
    accepted = [s for s in out.sent if s.status == 202 and s.job_id]
    replayed = [s for s in out.sent if s.status == 200]
    ids = [s.job_id for s in accepted if s.job_id] + [s.job_id for s in replayed if s.job_id]
    print(f"submitted in {out.submit_wall_s:.1f}s: {len(accepted)} accepted; polling", flush=True)

    poller: Any = DatabasePoller(args.database_url) if args.database_url else ApiPoller(args.url, key)
    if ids:
        wait_for_jobs(poller, ids, deadline, args.poll_interval, out)
    out.total_wall_s = time.monotonic() - started

    duplicated: dict[str, int] = {}
    missing_objects = 0
    tenant_id = None
    if args.database_url and ids:
        extra = poller.duplicates([s.key for s in out.sent])
        duplicated["jobs_per_key"] = sum(extra.values())
        tenant_id = poller.tenant(ids[0])
    elif ids:
        first = min(s.started for s in out.sent)
        listing = ApiPoller(args.url, key)
        listing.poll(ids, oldest=first - 1)
        ours = set(ids)
        texts = set(TEXTS)
        strays = [
            j
            for i, j in listing.listing.items()
            if i not in ours and j.get("text") in texts and (parse_time(j["created_at"]) or 0) >= first - 1
        ]
        duplicated["unexpected_jobs_in_listing"] = len(strays)
    if args.s3_endpoint and ids:
        if tenant_id is None:
            raise SystemExit("S3 checks need --database-url (to learn the tenant id of the jobs)")
        per_job = s3_objects(args, tenant_id)
        duplicated["objects_beyond_one_per_job"] = sum(n - 1 for n in per_job.values() if n > 1)
        missing_objects = sum(
            1 for i in ids if out.states.get(i, JobState("")).status == "succeeded" and not per_job[i]
        )
        stray_objects = sum(1 for i in per_job if i not in set(ids))
        duplicated["objects_of_unknown_jobs"] = stray_objects

    statuses = Counter(out.states[i].status if i in out.states else "missing" for i in ids)
    errors = Counter(out.states[i].error_code for i in ids if i in out.states and out.states[i].status == "failed")
    rejected = Counter(
        str(s.status) + (f" {s.error}" if s.error else "") for s in out.sent if s.status not in (200, 202)
    )
    submit_lat = [s.seconds for s in out.sent if s.status >= 0]
    sent_at = {s.job_id: s.started for s in accepted}
    e2e = [
        out.states[i].finished_at - sent_at[i]  # type: ignore[operator]
        for i in sent_at
        if i in out.states and out.states[i].status == "succeeded" and out.states[i].finished_at is not None
    ]
    not_terminal = sum(n for s, n in statuses.items() if s not in TERMINAL)
    report = {
        "run": run_id,
        "url": args.url,
        "jobs": args.n,
        "concurrency": args.concurrency,
        "accepted": len(accepted),
        "replayed_200": len(replayed),
        "rejected": dict(rejected),
        "succeeded": statuses["succeeded"],
        "failed": dict(errors) if errors else 0,
        "canceled": statuses["canceled"],
        # Still queued or running when the deadline came: not lost yet (see --resume), not finished either.
        "pending_at_deadline": not_terminal - statuses["missing"],
        "lost": {"missing": statuses["missing"], "succeeded_without_object": missing_objects},
        "duplicated": duplicated,
        "submit_latency_s": {"p50": percentile(submit_lat, 50), "p99": percentile(submit_lat, 99)},
        "end_to_end_s": {"p50": percentile(e2e, 50), "p99": percentile(e2e, 99), "max": max(e2e, default=math.nan)},
        "submit_wall_s": out.submit_wall_s,
        "submit_rate_per_s": len(out.sent) / out.submit_wall_s if out.submit_wall_s else math.nan,
        "total_wall_s": out.total_wall_s,
        # Jobs finished per second, from the first submission to the last finished_at.
        "completed_per_s": _throughput(out, ids),
        "poller": "database" if args.database_url else "api",
    }
    return report, out.sent


def _throughput(out: Outcome, ids: list[str]) -> float:
    finished = [out.states[i].finished_at for i in ids if i in out.states and out.states[i].status in TERMINAL]
    stamps = [t for t in finished if t is not None]
    if not stamps or not out.sent:
        return math.nan
    span = max(stamps) - min(s.started for s in out.sent)
    return len(stamps) / span if span > 0 else math.nan


def print_report(report: dict[str, Any]) -> None:
    print("\n" + "=" * 72)
    for name, value in report.items():
        if isinstance(value, float):
            value = round(value, 3)
        elif isinstance(value, dict):
            value = {k: round(v, 3) if isinstance(v, float) else v for k, v in value.items()}
        print(f"  {name:<20} {value}")
    print("=" * 72)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the farm's API, on loopback")
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--key", help="an API key")
    keys.add_argument("--key-file", help="a file holding an API key")
    parser.add_argument("-n", "--jobs", dest="n", type=int, default=5000, help="jobs to submit (default 5000)")
    parser.add_argument("--concurrency", type=int, default=16, help="submissions in flight (default 16)")
    parser.add_argument("--deadline", type=float, default=1200, help="seconds for the whole run (default 1200)")
    parser.add_argument("--submit-timeout", type=float, default=30, help="seconds per submission request")
    parser.add_argument("--poll-interval", type=float, default=5, help="seconds between polls")
    parser.add_argument("--database-url", help="the farm's PostgreSQL/SQLite URL: poll and count duplicates there")
    parser.add_argument("--s3-endpoint", help="the farm's S3 endpoint: count objects per job")
    parser.add_argument("--s3-bucket", default="voicefarm")
    parser.add_argument("--s3-access-key", default="voicefarm")
    parser.add_argument("--s3-secret-key", default="voicefarm-secret")
    parser.add_argument("--s3-region", default="us-east-1")
    parser.add_argument("--json", help="also write the report, with every submission, to this file")
    parser.add_argument("--resume", help="a --json file of an earlier run: poll and check its jobs again")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= MAX_JOBS:
        parser.error(f"-n must be between 1 and {MAX_JOBS}")
    if not 1 <= args.concurrency <= 256:
        parser.error("--concurrency must be between 1 and 256")
    check_loopback(args.url, "--url")
    if args.s3_endpoint:
        check_loopback(args.s3_endpoint, "--s3-endpoint")
    if args.database_url and not args.database_url.startswith("sqlite"):
        check_loopback(args.database_url.replace("postgresql+psycopg", "postgresql"), "--database-url")
    report, sent = run(args)
    print_report(report)
    if args.json:
        submissions = [vars(s) for s in sent]
        Path(args.json).write_text(json.dumps(report | {"submissions": submissions}, indent=1, default=str))
    lost = sum(report["lost"].values())
    duplicated = sum(report["duplicated"].values())
    return 1 if lost or duplicated or report["pending_at_deadline"] else 0


if __name__ == "__main__":
    sys.exit(main())
