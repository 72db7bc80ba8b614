"""A 1,000-line batch end to end: submit, synthesize, archive. Figures: docs/benchmarks/batch-1000.md.

    .venv/bin/python benchmarks/batch_1000.py --url http://127.0.0.1:7860 --key-file var/api_key [-n 1000]
    .venv/bin/python benchmarks/batch_1000.py --own-farm [--workers 2] [-n 1000] [--qa]   # a throwaway farm
    .venv/bin/python benchmarks/batch_1000.py --own-farm --cli [--interrupt-after 100]   # as a user would

With --own-farm it starts a farm of its own on loopback (tests/support/faultfarm.py: PostgreSQL, Redis, SeaweedFS,
`voicefarm api`, `voicefarm worker --cpu N`, `voicefarm reconcile`) and stops it afterwards. Lines are short and
each different: `Line 17.` (about 1 s of speech), or with --sentences `Line 17 of the benchmark, spoken once.`
(about 2.5 s); the batch's seed is random, so the dedup cache never answers a line from an earlier run.
Reports: submit time, synthesis wall time (submit to last line finished), lines per second, audio seconds per wall
second, the archive's streaming time and size, and per-line latency percentiles.

Lines skip the QA gate unless --qa (which also starts the farm's QA pool): the gate's own cost is in
docs/benchmarks/qa-gate.md. With --cli the batch goes through `voicefarm batch LINES.csv --out DIR` (a subprocess, its
progress bar in DIR.log); with --interrupt-after K it is sent Ctrl-C once K files are in DIR and run again, and a
single job is submitted right then: its wait to start is reported beside the batch lines' own run time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voicefarm.client.api import Client  # noqa: E402


def run(client: Client, n: int, poll_s: float, sentences: bool, qa: bool) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    text = "Line {i} of the benchmark, spoken once." if sentences else "Line {i}."
    lines = [{"id": f"b{i:04d}", "text": text.format(i=i)} for i in range(n)]
    seed = random.randrange(2**31)
    started = time.monotonic()
    defaults = {"seed": seed, "qa": qa}
    batch = client.create_batch(lines, defaults=defaults, name=f"bench-{tag}", idempotency_key=f"bench-{tag}")
    submit_s = time.monotonic() - started
    print(f"submitted {n} lines in {submit_s:.2f}s: batch {batch['id']}", flush=True)
    last = -1
    while True:
        view = client.get_batch(batch["id"])
        done = view["lines"] - view["counts"]["queued"] - view["counts"]["running"]
        if done // 50 != last // 50 or view["done"]:
            print(
                f"  {time.monotonic() - started:7.1f}s  {done}/{n} done, {view['audio_seconds']:.0f} s of audio",
                flush=True,
            )
            last = done
        if view["done"]:
            break
        time.sleep(poll_s)
    synth_s = time.monotonic() - started
    archive = Path(tempfile.mkdtemp(prefix="vf-bench-")) / "batch.zip"
    t0 = time.monotonic()
    size = client.download_archive(batch["id"], archive)
    archive_s = time.monotonic() - t0
    manifest = client.manifest(batch["id"])
    ok = [m for m in manifest if m["status"] == "succeeded"]
    audio_s = sum(float(m["duration_s"] or 0) for m in ok)
    jobs = [client.get_job(m["job_id"]) for m in ok[:: max(1, len(ok) // 100)]]
    latency = [_seconds(j["finished_at"]) - _seconds(j["created_at"]) for j in jobs if j.get("finished_at")]
    run_s = [_seconds(j["finished_at"]) - _seconds(j["started_at"]) for j in jobs if j.get("started_at")]
    return {
        "lines": n,
        "succeeded": len(ok),
        "submit_s": round(submit_s, 2),
        "wall_s_submit_to_all_done": round(synth_s, 1),
        "lines_per_s": round(len(ok) / synth_s, 3),
        "audio_s": round(audio_s, 1),
        "audio_s_per_wall_s": round(audio_s / synth_s, 3),
        "mean_line_audio_s": round(audio_s / max(1, len(ok)), 2),
        "line_run_s_median": round(statistics.median(run_s), 2) if run_s else None,
        "line_latency_s_p50": round(statistics.median(latency), 1) if latency else None,
        "archive_s": round(archive_s, 2),
        "archive_mb": round(size / 1e6, 1),
        "archive_mb_per_s": round(size / 1e6 / max(archive_s, 1e-6), 1),
    }


def run_cli(client: Client, n: int, sentences: bool, interrupt_after: int, qa: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vf-bench-cli-"))
    text = "Line {i} of the benchmark, spoken once." if sentences else "Line {i}."
    lines_csv, out = work / "lines.csv", work / "out"
    with lines_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows([f"b{i:04d}", text.format(i=i)] for i in range(n))
    env = os.environ | {"VOICEFARM_API_URL": client.url, "VOICEFARM_API_KEY": client.key}
    argv = [sys.executable, "-m", "voicefarm.cli", "batch", str(lines_csv), "--out", str(out)]
    argv += ["--seed", str(random.randrange(2**31)), "--poll", "1", "--qa" if qa else "--no-qa"]
    log_path = work / "cli.log"
    started = time.monotonic()
    figures: dict[str, Any] = {"lines": n}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        if interrupt_after:
            while len(list(out.glob("*.wav"))) < interrupt_after and proc.poll() is None:
                time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            figures["first_run_exit"] = proc.wait(60)
            figures["files_at_interrupt"] = len(list(out.glob("*.wav")))
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
            single = client.submit_job("A single job, submitted while the batch runs.", seed=random.randrange(2**31))
            job = client.wait_job(single["id"], timeout=600)
            figures["single_job_wait_to_start_s"] = round(_seconds(job["started_at"]) - _seconds(job["created_at"]), 2)
        figures["exit"] = proc.wait()
    wall_s = time.monotonic() - started
    state = json.loads((out / ".voicefarm-batch.json").read_text())
    manifest = client.manifest(state["batch_id"])
    ok = [m for m in manifest if m["status"] == "succeeded"]
    audio_s = sum(float(m["duration_s"] or 0) for m in ok)
    archive = work / "batch.zip"
    t0 = time.monotonic()
    size = client.download_archive(state["batch_id"], archive)
    archive_s = time.monotonic() - t0
    posts = len(client.list_batches(limit=200)["batches"])
    jobs = [client.get_job(m["job_id"]) for m in ok[:: max(1, len(ok) // 100)]]
    run_s = [_seconds(j["finished_at"]) - _seconds(j["started_at"]) for j in jobs if j.get("started_at")]
    return figures | {
        "succeeded": len(ok),
        "files_in_dir": len(list(out.glob("*.wav"))),
        "manifest_csv_rows": sum(1 for _ in (out / "manifest.csv").open()) - 1,
        "batches_created": posts,
        "wall_s_cli_start_to_exit": round(wall_s, 1),
        "lines_per_s": round(len(ok) / wall_s, 3),
        "audio_s": round(audio_s, 1),
        "audio_s_per_wall_s": round(audio_s / wall_s, 3),
        "line_run_s_median": round(statistics.median(run_s), 2) if run_s else None,
        "archive_s": round(archive_s, 2),
        "archive_mb": round(size / 1e6, 1),
        "progress_bar_tail": log_path.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-3:],
    }


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url")
    parser.add_argument("--key-file", type=Path)
    parser.add_argument("--own-farm", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("--sentences", action="store_true", help="longer lines (about 2.5 s of speech each)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--cli", action="store_true", help="run the batch through `voicefarm batch`")
    parser.add_argument("--interrupt-after", type=int, default=0, help="with --cli: Ctrl-C after K files, resume")
    parser.add_argument(
        "--qa",
        action="store_true",
        help="keep the QA gate on (the default for batch lines; its cost is docs/benchmarks/qa-gate.md)",
    )
    args = parser.parse_args()
    farm = None
    if args.own_farm:
        from tests.support.faultfarm import FaultFarm

        farm = FaultFarm(Path(tempfile.mkdtemp(prefix="vf-bench-logs-")), worker_cpu=args.workers, qa_worker=args.qa)
        farm.start_all()
        client = Client(farm.url, farm.key, timeout=120)
    else:
        key = args.key_file.read_text().strip() if args.key_file else None
        client = Client(args.url, key, timeout=120)
    try:
        if args.cli:
            figures = run_cli(client, args.n, args.sentences, args.interrupt_after, args.qa)
        else:
            figures = run(client, args.n, args.poll, args.sentences, args.qa)
    finally:
        if farm is not None:
            farm.stop_all()
    figures["workers"] = args.workers if args.own_farm else None
    figures["lines_text"] = "Line 17 of the benchmark, spoken once." if args.sentences else "Line 17."
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["succeeded"] == figures["lines"] and figures.get("exit", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
