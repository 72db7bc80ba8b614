"""PostgreSQL statements and Redis commands per job: what the farm asks of its shared services.

    .venv/bin/python benchmarks/round_trips.py [--jobs 40] [--workers 2] [--idle-s 30]

Starts a throwaway farm (tests/support/faultfarm.py: its own PostgreSQL, Redis and SeaweedFS, `voicefarm api`,
`voicefarm worker --cpu N`, `voicefarm reconcile`), with pg_stat_statements loaded into PostgreSQL. It counts
twice over the same kind of window, resetting the counters before each:
  1. idle: the farm running with nothing to do (heartbeats, the reconciler's passes, Celery's own polling);
  2. load: N short single jobs submitted at once and run to the end.
Per job = (load count - idle rate x load seconds) / N. The benchmark's own polling runs as another role and is
left out. Statements are counted by pg_stat_statements (each is one
round trip: psycopg sends statements one by one; BEGIN/COMMIT are counted as utility statements), Redis commands
by `INFO commandstats`. The table also lists the ten heaviest statements and commands of the load window.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.faultfarm import FaultFarm  # noqa: E402

# The benchmark's own reads run as this role, so that they can be left out of the counts.
OBSERVER = "observer"


def _dsn(url: str, user: str | None = None) -> str:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    return dsn.replace("//postgres@", f"//{user}@") if user else dsn


def pg_counts(url: str) -> Counter[str]:
    with psycopg.connect(_dsn(url, OBSERVER), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls FROM pg_stat_statements WHERE userid <> %s::regrole", (OBSERVER,)
        ).fetchall()
    counts: Counter[str] = Counter()
    for query, calls in rows:
        counts[_shape(query)] += int(calls)
    return counts


def _shape(query: str) -> str:
    """A short name for a statement: its verb and table (the text of a SELECT list says little)."""
    q = " ".join(query.split())
    verb = q.split(" ", 1)[0].upper()
    table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", q, re.IGNORECASE)
    if verb in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
        return verb
    return f"{verb} {table.group(1) if table else q[:40]}"


def pg_reset(url: str) -> None:
    with psycopg.connect(_dsn(url, OBSERVER), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def wait_done(url: str, ids: list[str], timeout: float) -> None:
    """Poll as the observer role until every job is final; a failed job fails the benchmark."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(_dsn(url, OBSERVER), autocommit=True) as conn:
        while time.monotonic() < deadline:
            rows = conn.execute("SELECT status FROM jobs WHERE id = ANY(%s)", (ids,)).fetchall()
            statuses = Counter(status for (status,) in rows)
            if statuses["succeeded"] == len(ids):
                return
            if statuses["failed"] or statuses["canceled"]:
                raise SystemExit(f"jobs did not all succeed: {dict(statuses)}")
            time.sleep(0.5)
    raise SystemExit(f"jobs not done after {timeout:.0f} s")


def redis_counts(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--idle-s", type=float, default=30.0)
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="vf-rt-logs-"))
    # Production-like lease and reconcile interval, so idle work is what a real farm does.
    farm = FaultFarm(logs, lease_s=60, reconcile_interval_s=10.0, worker_cpu=args.workers)
    try:
        farm.start_services()
        pg_url = farm.database_url
        with psycopg.connect(_dsn(pg_url), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            conn.execute(f"CREATE ROLE {OBSERVER} LOGIN SUPERUSER")
        farm.pg.pause()
        farm.pg.resume()
        with psycopg.connect(_dsn(pg_url), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        farm.start_worker()
        farm.start_reconciler()
        farm.start_api()
        # Warm every worker (the first job loads nothing more than later ones then).
        warm = [farm.submit(f"Warm up {i}.", format="wav").job_id for i in range(args.workers * 2)]
        farm.wait_terminal([w for w in warm if w], timeout=300)
        farm.wait_workers_ready()
        client = redis.Redis.from_url(farm.redis.url)

        pg_reset(pg_url)
        client.config_resetstat()
        time.sleep(args.idle_s)
        idle_pg, idle_redis, idle_s = pg_counts(pg_url), redis_counts(client), args.idle_s

        pg_reset(pg_url)
        client.config_resetstat()
        started = time.monotonic()
        subs = [farm.submit(f"Round trip line number {i}, spoken once.", format="wav") for i in range(args.jobs)]
        ids = [s.job_id for s in subs if s.job_id]
        assert len(ids) == args.jobs, [s.status for s in subs]
        wait_done(pg_url, ids, timeout=60 + 30 * args.jobs)
        load_s = time.monotonic() - started
        load_pg, load_redis = pg_counts(pg_url), redis_counts(client)

        def per_job(load: Counter[str], idle: Counter[str]) -> tuple[float, float, float]:
            total, idle_total = sum(load.values()), sum(idle.values())
            idle_share = idle_total / idle_s * load_s
            return total / args.jobs, idle_total / idle_s, (total - idle_share) / args.jobs

        pg_raw, pg_idle_rate, pg_net = per_job(load_pg, idle_pg)
        r_raw, r_idle_rate, r_net = per_job(load_redis, idle_redis)
        print(f"\n{args.jobs} jobs on {args.workers} worker processes in {load_s:.1f} s; idle window {idle_s:.0f} s")
        print(f"{'':34}{'per job (raw)':>16}{'idle per s':>12}{'per job (net)':>16}")
        print(f"{'PostgreSQL statements':34}{pg_raw:16.1f}{pg_idle_rate:12.2f}{pg_net:16.1f}")
        print(f"{'Redis commands':34}{r_raw:16.1f}{r_idle_rate:12.2f}{r_net:16.1f}")
        print("\nheaviest PostgreSQL statements in the load window (calls per job):")
        for name, calls in load_pg.most_common(12):
            print(f"  {calls / args.jobs:7.2f}  {name}")
        print("heaviest Redis commands in the load window (calls per job):")
        for name, calls in load_redis.most_common(12):
            print(f"  {calls / args.jobs:7.2f}  {name}")
        print("idle PostgreSQL statements per second:", {k: round(v / idle_s, 2) for k, v in idle_pg.most_common(6)})
        print("idle Redis commands per second:", {k: round(v / idle_s, 2) for k, v in idle_redis.most_common(6)})
    finally:
        farm.stop_all()


if __name__ == "__main__":
    main()
