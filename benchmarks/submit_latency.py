"""Submit latency at 100 requests/s over a queued batch, with and without the work that shares the machine.

    .venv/bin/python benchmarks/submit_latency.py [--workers 2] [--qa] [--reconciler] [--nice 19]
                                                  [--backlog 10000] [--count 1000] [--warmup 0] [--no-sync-commit]

Starts a throwaway farm (tests/support/faultfarm.py: its own PostgreSQL, Redis and SeaweedFS, `voicefarm api` with 2
processes), optionally `voicefarm reconcile`, `voicefarm qa-worker` and N kokoro workers (one intra-op thread,
`VOICEFARM_WORKER_NICE` as given), queues a batch of `--backlog` lines, waits 20 s when workers run (they start
on the backlog), then POSTs `--count` single jobs at 100 per second on a fixed schedule (after `--warmup` untimed
ones) and prints p50, p99 and the slowest. `./run.sh bench` measures figure (b) with everything
running; this script takes the parts apart (docs/benchmarks/farm-bench.md).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.farm_bench import Table, load, paced_submits, pct, spawn_worker  # noqa: E402
from tests.support.faultfarm import FaultFarm, kill9_tree  # noqa: E402
from voicefarm.client.api import Client  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--qa", action="store_true", help="run `voicefarm qa-worker`; batch lines pass the gate")
    parser.add_argument("--reconciler", action="store_true")
    parser.add_argument("--nice", type=int, default=19, help="VOICEFARM_WORKER_NICE of the workers")
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument(
        "--no-sync-commit",
        action="store_true",
        help="PostgreSQL with synchronous_commit off: commits do not wait for the disk",
    )
    args = parser.parse_args()
    env = {"VOICEFARM_ENGINE_THREADS": "1", "VOICEFARM_WORKER_NICE": str(args.nice)}
    farm = FaultFarm(Path(tempfile.mkdtemp(prefix="vf-submit-")), worker_cpu=1, api_workers=2, extra_env=env)
    workers = []
    try:
        farm.start_services()
        if args.no_sync_commit:
            import psycopg

            dsn = farm.database_url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_commit TO off")
                conn.execute("SELECT pg_reload_conf()")
        farm.start_api()
        if args.reconciler:
            farm.start_reconciler()
        if args.qa:
            farm.start_qa_worker()
        workers = [spawn_worker(farm, f"worker-{i + 1}", Table(), 300) for i in range(args.workers)]
        client = Client(farm.url, farm.key, timeout=120)
        backlog = [{"id": f"q{i:05d}", "text": f"Backlog line {i}."} for i in range(args.backlog)]
        client.create_batch(backlog, defaults={"seed": random.randrange(2**31), "qa": args.qa}, name="backlog")
        if workers:
            time.sleep(20)
        latencies = paced_submits(client, 100.0, args.count, warmup=args.warmup)
        print(
            f"workers {args.workers} (nice {args.nice}), qa {args.qa}, reconciler {args.reconciler}, "
            f"synchronous_commit {'off' if args.no_sync_commit else 'on'}, "
            f"{args.backlog}-line batch: p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms, "
            f"max {max(latencies):.1f} ms; load {load()} on {os.cpu_count()} cores"
        )
    finally:
        for proc in workers:
            kill9_tree(proc)
        farm.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
