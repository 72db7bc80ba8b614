"""One farm on three hosts (tests/support/netns.py): an API host running `VOICEFARM_LISTEN=ADDR
VOICEFARM_CPU_WORKERS=0 voicefarm up`, and two worker hosts joined with a token (`voicefarm worker --join URL
--token TOKEN --cpu 1`), each host a network namespace with an address from 198.18.0.0/15 on a switch of its own.
The commands are those of docs/operations/multi-host.md.

The hosts and the farm are made once for the module (CI's 2 cores: one set of services, short leases: 6 s, a
reconciler pass a second); scenarios run in an order that leaves the farm usable for the next, each with a tenant of
its own, and every one ends with the same check (MultiHostFarm.assert_once): each job succeeded with one row and
one stored object, the one its result names, whose bytes match its sha256. Figures (recovery times, overhead per
job under latency) are printed in a table at the end of the module (docs/benchmarks/multi-host.md).
"""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from shared.models import Job
from tests.support import clock, netns
from tests.support.needs import missing

pytestmark = [pytest.mark.slow, pytest.mark.faults]

LEASE_S = 6
SETTINGS = {
    "VOICEFARM_JOB_LEASE_S": str(LEASE_S),
    "VOICEFARM_RECONCILE_INTERVAL_S": "1",
    "VOICEFARM_RETRY_BACKOFF_MAX_S": "4",
    "VOICEFARM_WORKER_LIVE_S": "15",
    "VOICEFARM_API_WORKERS": "1",
    "VOICEFARM_STOP_TIMEOUT_S": "20",
    "VOICEFARM_LOG_FORMAT": "text",
}
# A worker host's own settings: its engine processes at the niceness of the tests (a busy machine would starve
# them at the default 19 while the API host's processes run).
WORKER_SETTINGS = {"VOICEFARM_WORKER_NICE": "0"}
# About ten seconds of speech in several segments: long enough to be caught running.
LONG = (
    "The farm keeps every job in its database. A worker that is cut off in the middle of a job loses nothing. "
    "Its lease runs out, the reconciler puts the job back in the queue, and another host speaks it again."
)
FIGURES: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[netns.MultiHostFarm]:
    why = netns.available()
    if why is not None:
        missing(f"multi-host tests: {why}")
    started = time.monotonic()
    farm = netns.MultiHostFarm(tmp_path_factory.mktemp("multihost"), settings=SETTINGS, worker_settings=WORKER_SETTINGS)
    try:
        api_s = farm.start_api_host()
        token = farm.join_token("--name", "harness", "--expires", "1h")
        for name in farm.workers:
            farm.start_worker_host(name, token)
        ready_s = farm.wait_workers(tuple(farm.workers))
        FIGURES["startup"] = {"api_host": api_s, "workers_live": ready_s, "total": time.monotonic() - started}
        farm.token = token
        yield farm
    finally:
        farm.close()
        lines = ["", "multi-host scenarios (seconds unless named):"]
        for name, figures in FIGURES.items():
            lines.append(f"  {name:<28} " + "  ".join(f"{k}={v:.2f}" for k, v in figures.items()))
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            print("\n".join(lines), flush=True)


def host_of(job: Job) -> str:
    return (job.worker or "").rpartition("@")[2]


def texts(scenario: str, count: int) -> list[str]:
    # Distinct lines: identical ones would be answered from the dedup cache without a worker.
    words = ["amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "island", "juniper"]
    return [f"{scenario.capitalize()} line {words[i % len(words)]} number {i + 1}." for i in range(count)]


# -- point 1: listening with authentication on, joining with nothing shared -------------------------------------


def test_listening_services_ask_for_credentials(farm: netns.MultiHostFarm) -> None:
    """From a worker host, every service on the API host's address refuses a client without credentials, and the
    worker credentials reach no further than workers need."""
    import psycopg
    import redis

    from shared.storage import Storage

    addr, w1 = farm.api.addr, farm.workers["w1"]
    for name in ("listen.json", "join.json"):
        assert stat.S_IMODE((farm.api_data / name).stat().st_mode) == 0o600, name
    published = json.loads((farm.api_data / "join.json").read_text())
    assert (
        addr in published["database_url"] and addr in published["broker_url"] and addr in published["s3_endpoint_url"]
    )

    def redis_refuses() -> str:
        client = redis.Redis(host=addr, port=6379, socket_timeout=5)
        try:
            client.ping()
        except redis.AuthenticationError as exc:
            return str(exc)
        finally:
            client.close()
        return "answered"

    assert "Authentication required" in w1.call(redis_refuses)

    def postgres_checks() -> dict[str, str]:
        seen: dict[str, str] = {}
        for who, url in {
            "superuser": f"postgresql://postgres@{addr}:5432/voicefarm?connect_timeout=5",
            "wrong_password": f"postgresql://voicefarm_worker:nope@{addr}:5432/voicefarm?connect_timeout=5",
        }.items():
            try:
                psycopg.connect(url).close()
                seen[who] = "connected"
            except psycopg.OperationalError as exc:
                seen[who] = str(exc)
        with psycopg.connect(published["database_url"], autocommit=True) as conn:
            seen["jobs"] = str(conn.execute("SELECT count(*) FROM jobs").fetchone())
            for what, statement in {
                "api_keys": "SELECT count(*) FROM api_keys",
                "join_tokens": "SELECT count(*) FROM join_tokens",
                "create": "CREATE TABLE stray (id int)",
                "alter": "ALTER TABLE jobs ADD COLUMN stray int",
            }.items():
                try:
                    conn.execute(statement)
                    seen[what] = "allowed"
                except psycopg.errors.InsufficientPrivilege as exc:
                    seen[what] = f"refused: {exc}"
        return seen

    seen = w1.call(postgres_checks)
    assert "no pg_hba.conf entry" in seen["superuser"], seen
    assert "password authentication failed" in seen["wrong_password"], seen
    assert seen["jobs"].startswith("(")
    for what in ("api_keys", "join_tokens", "create", "alter"):
        assert seen[what].startswith("refused"), seen

    def s3_checks() -> dict[str, int | str]:
        anonymous = requests.get(f"http://{addr}:8333/voicefarm/", timeout=5).status_code
        worker = Storage(
            published["s3_endpoint_url"], "voicefarm-other", published["s3_access_key"], published["s3_secret_key"]
        )
        try:
            worker.ensure_bucket()
            other = "allowed"
        except Exception as exc:  # the S3 error, whichever class the storage layer gives it
            other = f"refused: {exc}"
        return {"anonymous": anonymous, "other_bucket": other}

    s3 = w1.call(s3_checks)
    assert s3["anonymous"] == 403 and str(s3["other_bucket"]).startswith("refused"), s3
    answer = w1.call(lambda: requests.get(f"http://{addr}:{farm.API_PORT}/v1/jobs", timeout=5))
    assert answer.status_code == 401


def test_joined_hosts_hold_no_api_key(farm: netns.MultiHostFarm) -> None:
    """The answer to a join names services on the API host's address, never loopback, and no API key; nothing on
    a worker host's disk or in its workers' environment is an API key."""
    api_key = (farm.api_data / "api_key").read_text().strip()
    url = f"http://{farm.api.addr}:{farm.API_PORT}/v1/join"
    answer = farm.workers["w2"].call(
        lambda: requests.post(url, headers={"Authorization": f"Bearer {farm.token}"}, timeout=10)
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    for name in ("database_url", "broker_url", "s3_endpoint_url"):
        assert farm.api.addr in body["settings"][name] and "127.0.0.1" not in body["settings"][name]
    assert "vf_" not in answer.text and api_key not in answer.text
    for name in farm.workers:
        for path in farm.worker_data(name).rglob("*"):
            assert path.name != "api_key"
            if path.is_file():
                assert api_key.encode() not in path.read_bytes(), path
        for pid in farm.workers[name].pids():
            with contextlib.suppress(OSError):
                assert api_key.encode() not in Path(f"/proc/{pid}/environ").read_bytes()


# -- point 3: the scenarios ---------------------------------------------------------------------------------------


def test_a_batch_spreads_over_both_worker_hosts(farm: netns.MultiHostFarm) -> None:
    tenant, key = farm.new_tenant("spread")
    lines = [{"id": f"l{i}", "text": text} for i, text in enumerate(texts("spread", 8))]
    started = time.monotonic()
    response = farm.request("POST", "/v1/batches", key, json={"lines": lines, "defaults": {"qa": False}})
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    with farm.sessions() as session:
        ids = list(session.scalars(select(Job.id).where(Job.batch_id == batch_id)))
    assert len(ids) == len(lines)
    rows = farm.assert_once(tenant, ids)
    hosts = sorted({host_of(job) for job in rows.values()})
    assert hosts == ["w1", "w2"], {job.id: job.worker for job in rows.values()}
    assert all(job.attempts == 1 for job in rows.values())
    FIGURES["a_batch_8_lines"] = {"seconds": time.monotonic() - started}


def test_d_latency_and_loss(farm: netns.MultiHostFarm) -> None:
    """100 ms each way and 1 % loss on both worker hosts' cables: every job finishes; the overhead per job is the
    difference to the same jobs without it. tc netem where the kernel has it, else the same in user space
    (tests/support/wire.py); the round trip is measured either way, as a TCP connect from a worker host."""
    tenant, key = farm.new_tenant("netem")

    def run(tag: str) -> float:
        started = time.monotonic()
        ids = [farm.submit(key, text) for text in texts(tag, 4)]
        farm.assert_once(tenant, _ids_so_far(farm, tenant), timeout=240)
        rows = farm.jobs(ids)
        assert all(job.status == "succeeded" for job in rows.values())
        return (time.monotonic() - started) / len(ids)

    def connect_ms() -> float:
        started = time.monotonic()
        socket.create_connection((farm.api.addr, farm.API_PORT), timeout=10).close()
        return (time.monotonic() - started) * 1000

    clean = run("clean")
    clean_rtt = farm.workers["w1"].call(connect_ms)
    modes = {farm.net.netem(host, 100, 1) for host in farm.workers.values()}
    try:
        rtt = statistics.median(farm.workers["w1"].call(connect_ms) for _ in range(5))
        slowed = run("netem")
    finally:
        for host in farm.workers.values():
            farm.net.clear_netem(host)
    # Both ways delayed: a connect waits at least two delays (one more, 1 s or more, when a SYN is lost).
    assert rtt >= 195, f"the cable is not slowed: connect took {rtt:.0f} ms"
    assert farm.workers["w1"].call(connect_ms) < 50, "the cable stayed slow after clear_netem"
    FIGURES[f"d_netem_100ms_1pct ({modes.pop()})"] = {
        "per_job_clean": clean,
        "per_job_netem": slowed,
        "overhead": slowed - clean,
        "connect_ms_clean": clean_rtt,
        "connect_ms_netem": rtt,
    }


def _ids_so_far(farm: netns.MultiHostFarm, tenant: str) -> list[str]:
    with farm.sessions() as session:
        return list(session.scalars(select(Job.id).where(Job.tenant_id == tenant)))


def _running_on(farm: netns.MultiHostFarm, job_id: str) -> str:
    """Wait until the job runs; the host it runs on."""
    seen: dict[str, str] = {}

    def running() -> bool:
        job = farm.jobs([job_id])[job_id]
        seen["host"] = host_of(job)
        return job.status == "running" and bool(seen["host"])

    farm.wait(running, 120, f"job {job_id} to start", interval=0.1)
    return seen["host"]


def test_b_worker_host_cut_off_past_its_lease(farm: netns.MultiHostFarm) -> None:
    tenant, key = farm.new_tenant("partition")
    job_id = farm.submit(key, LONG)
    stale = _running_on(farm, job_id)
    other = next(name for name in farm.workers if name != stale)
    cut = time.monotonic()
    farm.net.link(farm.workers[stale], up=False)
    try:
        took = farm.wait(lambda: host_of(farm.jobs([job_id])[job_id]) == other, 120, f"{other} to take the job")
        FIGURES["b_partition"] = {"handed_over": took}
        farm.wait_terminal([job_id], timeout=180)
        FIGURES["b_partition"]["finished"] = time.monotonic() - cut
    finally:
        farm.net.link(farm.workers[stale], up=True)
    healed = time.monotonic()
    # Back on the network, the stale worker's writes are refused (fenced by attempt): it says so, and its take
    # is deleted, not stored over the other host's.
    said = (f"job {job_id} attempt 1", f"job {job_id} is finished or held")
    farm.wait(
        lambda: any(line in farm.tail(stale, 1_000_000) for line in said),
        120,
        f"{stale} to learn it lost job {job_id}",
    )
    FIGURES["b_partition"]["stale_refused_after_heal"] = time.monotonic() - healed
    rows = farm.assert_once(tenant, [job_id])
    assert host_of(rows[job_id]) == other and rows[job_id].attempts >= 2
    farm.wait_workers((stale,), timeout=120)


def test_c_worker_host_reaches_the_database_but_not_storage(farm: netns.MultiHostFarm) -> None:
    """A one-sided partition: one worker host's packets to the S3 port are dropped. The job it holds waits (its
    heartbeat still reaches the database, so its lease stays live) and finishes once when storage is back, or is
    handed to the other host; none is lost or stored twice."""
    tenant, key = farm.new_tenant("one-sided")
    blocked = farm.workers["w1"]
    farm.net.block_port(blocked, 8333)
    started = time.monotonic()
    try:
        ids = [farm.submit(key, text) for text in texts("onesided", 4)]
        farm.wait(lambda: any(host_of(j) == "w1" for j in farm.jobs(ids).values()), 90, "w1 to take a job")
        held = next(j.id for j in farm.jobs(ids).values() if host_of(j) == "w1")
        # Its take is made; the upload cannot reach storage: the finish is kept and retried.
        farm.wait(
            lambda: any(held in line and "retrying the finish" in line for line in farm.tail("w1", 10**6).splitlines()),
            120,
            lambda: f"w1 to find storage unreachable for job {held}:\n{farm.tail('w1')}",
        )
        stuck = time.monotonic()
        time.sleep(2 * LEASE_S)
        job = farm.jobs([held])[held]
        assert job.status == "running" or (host_of(job) == "w2" and job.attempts >= 2), (job.status, job.worker)
        waited = time.monotonic() - stuck
    finally:
        farm.net.unblock(blocked, 8333)
    unblocked = time.monotonic()
    rows = farm.assert_once(tenant, ids, timeout=240)
    FIGURES["c_storage_cut"] = {
        "held_without_storage": waited,
        "done_after_unblock": time.monotonic() - unblocked,
        "total": time.monotonic() - started,
    }
    assert all(job.status == "succeeded" for job in rows.values())
    assert rows[held].attempts == 1 or host_of(rows[held]) == "w2"


def test_g_api_host_restarted_while_worker_hosts_stay_up(farm: netns.MultiHostFarm) -> None:
    tenant, key = farm.new_tenant("restart")
    started = time.monotonic()
    farm.stop_api_host()
    stopped = time.monotonic() - started
    farm.start_api_host()
    back = time.monotonic()
    live_again = farm.wait_workers(tuple(farm.workers), timeout=120)
    ids = [farm.submit(key, text) for text in texts("restart", 4)]
    rows = farm.assert_once(tenant, ids)
    assert {host_of(job) for job in rows.values()} <= set(farm.workers)
    FIGURES["g_api_restart"] = {
        "stop": stopped,
        "up_again": back - started - stopped,
        "workers_live_again": live_again,
        "jobs_done": time.monotonic() - back,
    }
    assert all(proc.poll() is None for proc in farm.worker_procs.values()), "a worker host gave up"


def test_e_whole_worker_host_lost(farm: netns.MultiHostFarm) -> None:
    """Every process on a worker host SIGKILLed at once, mid-job: the job is recovered within about a lease."""
    tenant, key = farm.new_tenant("lost")
    job_id = farm.submit(key, LONG)
    lost = _running_on(farm, job_id)
    killed = farm.workers[lost].kill_all()
    farm.worker_procs.pop(lost, None)
    assert killed
    gone = time.monotonic()
    took = farm.wait(
        lambda: (job := farm.jobs([job_id])[job_id]).attempts >= 2 and host_of(job) != lost,
        LEASE_S * 6,
        f"job {job_id} to be recovered from {lost}",
        interval=0.1,
    )
    rows = farm.assert_once(tenant, [job_id])
    FIGURES["e_host_lost"] = {"lease": LEASE_S, "recovered": took, "finished": time.monotonic() - gone}
    # About a lease: the lease runs out, then the next reconciler pass (1 s) and the other host's claim.
    assert took < LEASE_S * 3, f"recovery took {took:.1f}s with a {LEASE_S}s lease"
    assert rows[job_id].status == "succeeded"


def test_f_skewed_clocks(farm: netns.MultiHostFarm, tmp_path: Path) -> None:
    """One worker host ten minutes fast, the other ten minutes slow (tests/support/clock.py): every job runs once,
    and no host takes a live job from the other (leases are the database's clock); the slow host still signs its
    files' manifests (the certificate the API host made is valid from a day before)."""
    shim = clock.build_shim(tmp_path)
    for name in list(farm.worker_procs):
        farm.stop_worker_host(name)
    offsets = {"w1": 600, "w2": -600}
    for name, offset in offsets.items():
        farm.start_worker_host(name, farm.token, env=clock.skewed(shim, offset))
    farm.wait_workers(tuple(farm.workers))
    # Every process on a worker host has the skewed clock, and reads it so.
    for name, offset in offsets.items():
        environs = [_environ(pid) for pid in farm.workers[name].pids()]
        assert environs and all(e.get("VOICEFARM_TEST_CLOCK_OFFSET_S") == str(offset) for e in environs), name
        seen = farm.workers[name].run([sys.executable, "-c", "import time; print(time.time())"], environs[-1])
        assert abs(float(seen.stdout) - time.time() - offset) < 30, (name, seen.stdout, seen.stderr)
    tenant, key = farm.new_tenant("clocks")
    started = time.monotonic()
    ids = [farm.submit(key, text) for text in texts("clocks", 6)]
    long_id = farm.submit(key, f"{LONG} {LONG}")  # runs past a lease: renewed by a skewed host, never taken away
    rows = farm.assert_once(tenant, [*ids, long_id])
    assert all(job.attempts == 1 for job in rows.values()), {j.id: j.attempts for j in rows.values()}
    long_job = rows[long_id]
    assert long_job.started_at and long_job.finished_at
    ran = (long_job.finished_at - long_job.started_at).total_seconds()  # the database's clock, both
    assert ran > LEASE_S, f"the long job ran {ran:.1f}s, not past its {LEASE_S}s lease: the test proves less"
    assert {host_of(job) for job in rows.values()} == {"w1", "w2"}, {j.id: j.worker for j in rows.values()}
    FIGURES["f_clocks_+600_-600"] = {"jobs": len(rows), "seconds": time.monotonic() - started, "long_job_ran": ran}


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
