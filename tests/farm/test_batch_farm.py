"""Batches on a real farm (tests/support/faultfarm.py: `voicefarm api`, `voicefarm worker --cpu 2`, `voicefarm
reconcile` as processes over their own PostgreSQL, Redis and SeaweedFS): a single job is not starved behind a 2,000-line
batch, the broker holds only a window, cancel is immediate, the same seed gives the same audio on both workers,
`voicefarm batch` resumes after Ctrl-C without submitting anything again, and a finished batch announces itself once,
signed, to a real receiver."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import soundfile as sf
from sqlalchemy import func, select

from shared import tenants
from shared.db import transaction
from shared.models import Batch, Job
from shared.provenance import consent
from tests.farm.test_webhooks import Receiver, readme_verifier
from tests.support.asr import error_rate, transcribe
from tests.support.faultfarm import FaultFarm, log
from voicefarm.ops import services

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultFarm]:
    # Webhook receivers in these tests listen on loopback. A QA pool as `voicefarm up` runs one: batch lines pass
    # the gate by default (the CLI's runs below); tests about scheduling and seeds turn it off.
    farm = FaultFarm(
        tmp_path_factory.mktemp("batchfarm"),
        lease_s=20,
        qa_worker=True,
        extra_env={"VOICEFARM_WEBHOOK_ALLOW_PRIVATE": "1"},
    )
    try:
        farm.start_all()
        yield farm
    finally:
        farm.stop_all()


def new_key(farm: FaultFarm, tenant: str) -> str:
    with transaction(farm.sessions) as session:
        _row, key = tenants.create_key(session, tenant)
    return key


def post_batch(farm: FaultFarm, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(
        f"{farm.url}/v1/batches", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def batch_jobs(farm: FaultFarm, batch_id: str) -> list[Job]:
    with farm.sessions() as session:
        return list(session.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.line_no)))


def broker_depth(farm: FaultFarm) -> int:
    client = redis.Redis.from_url(farm.redis.url)
    try:
        return sum(int(client.llen(name)) for name in client.keys("engine.kokoro*"))  # type: ignore[arg-type]
    finally:
        client.close()


def test_a_single_job_behind_a_2000_line_batch_starts_within_one_line(farm: FaultFarm) -> None:
    key = new_key(farm, "bulk")
    lines = [{"id": f"l{i:04d}", "text": f"Line {i}."} for i in range(2000)]
    started = time.monotonic()
    batch = post_batch(farm, key, {"lines": lines, "defaults": {"qa": False}})
    log(f"2000-line batch accepted in {time.monotonic() - started:.2f}s")

    def succeeded() -> list[Job]:
        return [j for j in batch_jobs(farm, batch["id"]) if j.status == "succeeded"]

    farm.wait_until(lambda: len(succeeded()) >= 6, 180, "six batch lines to finish", 0.5)
    # The broker holds a window (2 per live worker), never the backlog.
    depths = [broker_depth(farm) for _ in range(5)]
    assert max(depths) <= 4, depths
    durations = [(j.finished_at - j.started_at).total_seconds() for j in succeeded()]  # type: ignore[operator]
    line_s = max(durations)
    sub = farm.submit("An interactive job, submitted behind the batch.")
    assert sub.status == 202 and sub.job_id
    single = farm.wait_terminal([sub.job_id], 120)[sub.job_id]
    assert single["status"] == "succeeded", single
    with farm.sessions() as session:
        job = session.get(Job, sub.job_id)
        assert job is not None and job.started_at is not None
        waited = (job.started_at - job.created_at).total_seconds()
    log(
        f"single job waited {waited:.2f}s to start; batch lines take median {statistics.median(durations):.2f}s, "
        f"max {line_s:.2f}s; broker depth {depths}"
    )
    # It was the next thing a worker took: no batch line started between its message reaching the broker and its
    # start...
    in_broker = job.sent_at or job.created_at
    overtaking = [
        j.line_id
        for j in batch_jobs(farm, batch["id"])
        if j.started_at is not None and in_broker < j.started_at < job.started_at
    ]
    assert not overtaking, overtaking
    # ...so it waited at most for the line a worker was speaking (measured over the batch so far) to end.
    longest = max(
        [(j.finished_at - j.started_at).total_seconds() for j in succeeded() if j.finished_at and j.started_at]
    )
    assert waited <= max(line_s, longest) + 1.0, (waited, durations)

    # Cancel: every queued line at once; the running ones finish; nothing else is taken.
    response = requests.post(
        f"{farm.url}/v1/batches/{batch['id']}/cancel", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    view = response.json()
    assert response.status_code == 200 and view["counts"]["queued"] == 0, view
    assert view["counts"]["running"] <= 2 and view["counts"]["canceled"] >= 2000 - 4 - len(durations) - 10, view
    done_at_cancel = view["counts"]["succeeded"] + view["counts"]["running"]
    time.sleep(5)
    final = requests.get(f"{farm.url}/v1/batches/{batch['id']}", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    counts = final.json()["counts"]
    assert counts["running"] == 0 and counts["succeeded"] <= done_at_cancel, (view, counts)
    assert broker_depth(farm) <= 4


def test_same_seed_same_audio_on_both_workers(farm: FaultFarm) -> None:
    lines = [{"id": f"s{i}", "text": f"Episode two, line {i}, in the narrator's voice."} for i in range(6)]
    # One tenant per round: the dedup cache is per tenant, so every round synthesizes every line again, on whichever
    # worker is free. Which worker takes a line is the scheduler's business, so rounds go on (up to five) until some
    # line has been spoken by both workers.
    takes: dict[str, list[Job]] = {line["id"]: [] for line in lines}
    for n in range(1, 6):
        batch = post_batch(farm, new_key(farm, f"series-{n}"), {"lines": lines, "defaults": {"seed": 42, "qa": False}})
        ids = [j.id for j in batch_jobs(farm, batch["id"])]
        rows = farm.wait_terminal(ids, 300)
        assert all(r["status"] == "succeeded" for r in rows.values()), rows
        for job in batch_jobs(farm, batch["id"]):
            takes[str(job.line_id)].append(job)
        if n >= 2 and any(len({j.worker for j in jobs}) == 2 for jobs in takes.values()):
            break
    for line_id, jobs in takes.items():
        assert all(j.seed == 42 and j.result is not None and not j.result.get("cached") for j in jobs), line_id
        # The files differ by their labels (the job id is in the AIGC tag and the C2PA manifest); the samples may not.
        assert len({samples_sha256(farm, j) for j in jobs}) == 1, (line_id, [j.worker for j in jobs])
    across = [line_id for line_id, jobs in takes.items() if len({j.worker for j in jobs}) == 2]
    log(f"same audio for {len(takes)} lines over {n} rounds; lines spoken by both workers: {across}")
    assert across, "no line was spoken by both workers in five rounds; nothing compared across workers"


def samples_sha256(farm: FaultFarm, job: Job) -> str:
    assert job.result is not None
    audio, _ = sf.read(io.BytesIO(farm.s3.storage().get(job.result["key"])), dtype="int16")
    return hashlib.sha256(audio.tobytes()).hexdigest()


def cli(farm: FaultFarm, key: str, *args: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"VOICEFARM_API_URL": farm.url, "VOICEFARM_API_KEY": key, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "voicefarm.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Ctrl-C as in a terminal: a suite run as a background job (`cmd &`) inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_voicefarm_batch_resumes_without_submitting_again(farm: FaultFarm, tmp_path: Path) -> None:
    key = new_key(farm, "cli")
    lines_csv = tmp_path / "lines.csv"
    with lines_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        for i in range(12):
            writer.writerow([f"ep3-{i:02d}", f"Scene {i}: the door opens slowly."])
    out = tmp_path / "out"
    posts_before = farm.log_tail("api", 10**7).count('"POST /v1/batches ')
    first = cli(farm, key, "batch", str(lines_csv), "--voice", "jm_kumo", "--seed", "3", "--out", str(out))
    farm.wait_until(lambda: any(out.glob("*.wav")), 180, "the first file to be downloaded", 0.2)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    output = first.communicate(timeout=60)[0].decode(errors="replace")
    assert first.returncode == 130, output
    assert "run the same command again" in output
    had = sorted(p.name for p in out.glob("*.wav"))
    assert 1 <= len(had) < 12, had
    mtimes = {name: (out / name).stat().st_mtime_ns for name in had}

    second = cli(farm, key, "batch", str(lines_csv), "--voice", "jm_kumo", "--seed", "3", "--out", str(out))
    output = second.communicate(timeout=300)[0].decode(errors="replace")
    assert second.returncode == 0, output
    assert "12 of 12 lines" in output and "line/s" in output  # the progress bar's rate
    assert sorted(p.name for p in out.glob("*.wav")) == [f"ep3-{i:02d}.wav" for i in range(12)]
    # Files already there were not downloaded again.
    assert {name: (out / name).stat().st_mtime_ns for name in had} == mtimes
    with (out / "manifest.csv").open() as fh:
        manifest = list(csv.DictReader(fh))
    assert [m["line_id"] for m in manifest] == [f"ep3-{i:02d}" for i in range(12)]
    for row in manifest:
        assert row["status"] == "succeeded"
        assert hashlib.sha256((out / row["file"]).read_bytes()).hexdigest() == row["sha256"]

    # Without its state file a run asks the farm, which answers the key with the same batch: nothing new.
    (out / ".voicefarm-batch.json").unlink()
    third = cli(
        farm, key, "batch", str(lines_csv), "--voice", "jm_kumo", "--seed", "3", "--out", str(out), "--no-progress"
    )
    output = third.communicate(timeout=120)[0].decode(errors="replace")
    assert third.returncode == 0, output
    with farm.sessions() as session:
        tenant = session.scalar(select(Batch.tenant_id).where(Batch.name == "").limit(1))
        assert tenant is not None
        batch_count = session.scalar(
            select(func.count()).select_from(Batch).join(Job, Job.batch_id == Batch.id).where(Job.line_id == "ep3-00")
        )
        line_count = session.scalar(select(func.count()).select_from(Job).where(Job.line_id.like("ep3-%")))
    assert batch_count == 1 and line_count == 12
    # Three runs, two POSTs: the resumed run found its state and asked nothing; the run without state got the
    # same batch back for the same key.
    posts = farm.log_tail("api", 10**7).count('"POST /v1/batches ')
    assert posts - posts_before == 2, posts
    log(f"voicefarm batch: {len(had)} files before Ctrl-C, resumed to 12; 2 POSTs in 3 runs")


def test_voicefarm_batch_exits_non_zero_naming_failed_lines(farm: FaultFarm, tmp_path: Path) -> None:
    key = new_key(farm, "cli-fail")
    lines_csv = tmp_path / "lines.csv"
    # More lines than the window (4): those still in the database when the batch is canceled never run.
    lines_csv.write_text("id,text\n" + "".join(f"c{i:02d},Closing line {i} of the season.\n" for i in range(30)))
    out = tmp_path / "out"
    run = cli(farm, key, "batch", str(lines_csv), "--out", str(out), "--no-progress", "--poll", "0.2")

    # Cancel the batch as soon as it exists: its queued lines are canceled, and the CLI names them.
    def batch_id() -> str | None:
        with farm.sessions() as session:
            return session.scalar(select(Job.batch_id).where(Job.line_id == "c29"))

    farm.wait_until(lambda: batch_id() is not None, 60, "the batch to be created", 0.1)
    requests.post(f"{farm.url}/v1/batches/{batch_id()}/cancel", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    output = run.communicate(timeout=300)[0].decode(errors="replace")
    with farm.sessions() as session:
        statuses = dict(session.execute(select(Job.line_id, Job.status).where(Job.batch_id == batch_id())).all())
    bad = [line for line, status in statuses.items() if status != "succeeded"]
    assert bad, statuses  # at least the line still queued at the cancel
    assert run.returncode == 1, output
    for line in bad:
        assert f"{line} (canceled)" in output, output


def test_voices_add_say_jobs_status(farm: FaultFarm, tmp_path: Path) -> None:
    key = new_key(farm, "cli-say")

    def run(*args: str, timeout: float = 300) -> str:
        proc = cli(farm, key, *args)
        output = proc.communicate(timeout=timeout)[0].decode(errors="replace")
        assert proc.returncode == 0, (args, output)
        return output

    # A reference clip to clone from: a few seconds of a stock voice, made by `say` itself.
    reference = tmp_path / "reference.wav"
    text = "This is the narrator of the series, reading a sample for the farm to learn the voice from."
    assert "s of audio" in run("say", text, "--voice", "jf_alpha", "-o", str(reference))
    with transaction(farm.sessions) as session:
        consent.set_policy(session, "cli-say", consent.ATTESTED)
    added = run("voices", "add", str(reference), "--transcript", text, "--name", "narrator", "--attest")
    voice_id = added.split()[1].rstrip(":")
    assert voice_id.startswith("v_") and f"voice {voice_id}: ready" in added, added
    line = tmp_path / "line.flac"
    said = run("say", "A line in the cloned voice.", "--voice", voice_id, "-o", str(line))
    assert line.read_bytes()[:4] == b"fLaC", said
    again = run("say", "A line in the cloned voice.", "--voice", voice_id, "-o", str(tmp_path / "again.flac"))
    assert "(cached)" in again and (tmp_path / "again.flac").read_bytes() == line.read_bytes()
    listing = run("jobs", "--limit", "5")
    assert "A line in the cloned voice." in listing
    assert "ready" in run("status")


def test_a_finished_batch_announces_itself_once_to_a_real_receiver(farm: FaultFarm) -> None:
    """The whole path: workers finish the lines, the one that finishes the batch queues its event, the webhook
    worker signs and posts it; the manifest it links to names each line's audio, which says the line's text."""
    with transaction(farm.sessions) as session:
        row, key = tenants.create_key(session, "announced")
        secret = row.webhook_secret
    receiver = Receiver()
    hooks = farm._spawn("webhook", "webhook-worker", "--concurrency", "1")
    try:
        texts = {f"ep4-{i}": f"Chapter four, line {i}: the lights go down." for i in range(3)}
        body = {"lines": [{"id": k, "text": t} for k, t in texts.items()], "webhook_url": receiver.url}
        # No QA gate: the farm here runs no QA pool, and this test is about the event.
        batch = post_batch(farm, key, body | {"defaults": {"seed": 4, "qa": False}})
        farm.wait_until(lambda: len(receiver.received) >= 1, 300, "the batch's event", 0.2)
        time.sleep(3.0)  # a second event would show by now
    finally:
        services.terminate(hooks, 30)
        receiver.close()
    (seen,) = receiver.received
    assert readme_verifier()(secret, seen.headers, seen.body)
    event = json.loads(seen.body)
    assert event["event"] == "batch.completed" and event["batch"]["id"] == batch["id"]
    assert event["batch"]["counts"]["succeeded"] == 3 and event["batch"]["status"] == "succeeded"
    manifest = requests.get(event["batch"]["manifest"]["url"], timeout=30).json()
    assert [r["line_id"] for r in manifest["lines"]] == list(texts)
    line = manifest["lines"][1]
    audio, rate = sf.read(io.BytesIO(requests.get(line["url"], timeout=30).content), dtype="float32")
    heard = transcribe(audio, rate, "en")
    assert error_rate(texts[line["line_id"]], heard, "en") < 0.35, heard
    with farm.sessions() as session:
        stored = session.get(Batch, batch["id"])
        assert stored is not None and stored.webhook_delivered_at is not None and stored.webhook_attempts == 1
    log(f"batch event delivered once; line {line['line_id']} heard as {heard!r}")
