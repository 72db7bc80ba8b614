"""A whole farm of real processes on loopback whose services a test may stop, break and restart.

Unlike the session fixtures in conftest.py, a FaultFarm owns its Redis, PostgreSQL and SeaweedFS: it can
restart Redis empty, pause PostgreSQL, or take S3 away and bring it back on the same port with the same data,
without disturbing any other test. On top of them it runs `voicefarm api`, `voicefarm worker --cpu 1` and
`voicefarm reconcile` as subprocesses, and it checks the end state straight in the database and in S3.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.config import Settings
from shared.db import make_engine, make_session_factory, migrate, transaction
from shared.errors import Unavailable
from shared.models import Job
from shared.provenance import consent
from shared.storage import Storage
from voicefarm.ops import services

LOOPBACK = services.LOOPBACK
CLI = [sys.executable, "-m", "voicefarm.cli"]
TERMINAL = ("succeeded", "failed", "canceled")
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[faultfarm {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- processes -----------------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, pgid, state) of a live process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), fields[0]


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[2] not in ("Z", "X")


def descendants(root: int) -> list[int]:
    """Every live process below `root`, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def kill9_tree(proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL a process, every process group below it, and its own group; returns the pids it killed.

    Groups below it go first: the supervisor's children get SIGTERM when it dies (PDEATHSIG), and a SIGTERM
    would let Celery finish its task gracefully, which is exactly what a kill -9 must not allow.
    """
    pids = [proc.pid, *descendants(proc.pid)]
    groups = []
    for pid in reversed(pids):
        stat = _stat(pid)
        if stat is not None and stat[1] not in groups:
            groups.append(stat[1])
    for pgid in groups:
        services.kill_group(pgid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids), f"processes survived SIGKILL: {[p for p in pids if alive(p)]}"
    return pids


def _distinct_free_ports(count: int) -> list[int]:
    """Free loopback ports, all different: every socket stays bound until all are chosen."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def s3_call(fn: Callable[[], T], timeout: float = 30) -> T:
    """Call S3, riding out the 500s a freshly restarted SeaweedFS answers until its volumes are back."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# --- services that can be restarted ----------------------------------------------------------------------------


@dataclass
class Redis:
    data_dir: Path
    port: int = 0
    service: services.Service | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        self.service = services.start_redis(self.data_dir, port=self.port or None, persistent=False)
        self.port = int(self.service.info["port"])

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def restart_empty(self) -> None:
        """Stop and start again on the same port; without persistence every message is gone."""
        self.stop()
        self.start()

    def dbsize(self) -> int:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            return int(client.dbsize())  # type: ignore[arg-type]
        finally:
            client.close()


@dataclass
class Postgres:
    """A throwaway cluster whose server can be stopped and started again with its data kept."""

    data_dir: Path
    service: services.Service | None = None

    @property
    def url(self) -> str:
        assert self.service is not None
        return self.service.url

    @property
    def port(self) -> int:
        assert self.service is not None
        return int(self.service.info["port"])

    def start(self) -> None:
        self.service = services.start_postgres(self.data_dir)

    def pause(self) -> None:
        """`pg_ctl stop -m fast`: every connection is closed and the port refuses new ones."""
        assert self.service is not None and self.service.stop_argv is not None
        subprocess.run(self.service.stop_argv, check=True, capture_output=True, timeout=30)

    def resume(self) -> None:
        assert self.service is not None and self.service.log_path is not None
        pgdata = self.service.info["pgdata"]
        sockdir = self.service.cleanup_paths[1]
        opts = f"-c listen_addresses={LOOPBACK} -p {self.port} -k {sockdir} -c fsync=off -c full_page_writes=off"
        # The binaries the server was started with (a copy of the wheel's where PostgreSQL's user needs one).
        bindir = Path(self.service.info.get("bindir") or services.postgres_bin_dir())
        pg_ctl = [str(bindir / "pg_ctl"), "-D", pgdata]
        argv = [*pg_ctl, "-l", str(self.service.log_path), "-w", "-t", "30", "-o", opts, "start"]
        res = subprocess.run(
            services._as_postgres(argv), cwd=self.service.cleanup_paths[0], capture_output=True, timeout=60
        )
        assert res.returncode == 0, res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None


@dataclass
class SeaweedS3:
    """`weed mini` on fixed ports (its internal ones too), so a restart finds the volumes it saved."""

    data_dir: Path
    access_key: str = field(default_factory=lambda: "ff-" + uuid.uuid4().hex[:8])
    secret_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    bucket: str = "faultfarm"
    port: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 60) -> None:
        """Start on the ports of the last start; the first start picks free ports, trying again on new ones when
        one of them was taken meanwhile."""
        if self.port:
            self._start(timeout)
            return
        for attempt in range(3):
            ports = _distinct_free_ports(1 + len(services.SEAWEED_PORT_NAMES))
            self.port, self.ports = ports[0], dict(zip(services.SEAWEED_PORT_NAMES, ports[1:], strict=True))
            try:
                self._start(timeout)
                return
            except services.ServiceError:
                if attempt == 2:
                    raise
                log("seaweedfs did not start; trying other ports")

    def _start(self, timeout: float) -> None:
        config = services.write_s3_identities(self.data_dir / "identities.json", self.access_key, self.secret_key)
        argv = [*services.seaweedfs_argv(self.data_dir, self.port, config, self.ports), "-volume.preStopSeconds=0"]
        log_path = self.data_dir / "weed.log"
        self.proc = services.spawn(argv, log_path=log_path)
        if not services.wait_until(lambda: services.s3_ready(self.url), timeout, self.proc):
            services.terminate(self.proc, 10)
            self.proc = None
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise services.ServiceError(f"seaweedfs did not start on :{self.port} {self.ports}:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None:
            services.terminate(self.proc, 15)
            self.proc = None

    def storage(self) -> Storage:
        return Storage(self.url, self.bucket, self.access_key, self.secret_key, connect_timeout=2, read_timeout=10)


# --- the farm ----------------------------------------------------------------------------------------------


@dataclass
class Submission:
    key: str
    status: int  # 0: no answer (connection refused, timeout)
    seconds: float
    job_id: str | None = None
    code: str | None = None  # the error code of a JSON error answer
    content_type: str = ""


class FaultFarm:
    """Services + api + worker + reconciler, each started and stopped on demand; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        lease_s: int = 10,
        reconcile_interval_s: float = 2.0,
        api_workers: int = 1,
        worker_cpu: int = 2,
        database: str = "postgresql",
        qa_worker: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        # Unix socket paths are limited to ~107 bytes: keep the services' dir short.
        self.root = Path(tempfile.mkdtemp(prefix="vf-ff-"))
        self.logs = root
        self.redis = Redis(self.root / "redis")
        self.pg = Postgres(self.root / "pg")
        self.s3 = SeaweedS3(self.root / "s3")
        self.lease_s, self.reconcile_interval_s = lease_s, reconcile_interval_s
        self.api_workers, self.worker_cpu, self.extra_env = api_workers, worker_cpu, extra_env or {}
        self.database = database
        # `voicefarm qa-worker`, the QA gate's pool: batch lines wait for it in `checking` unless they ask qa: false.
        self.qa_worker = qa_worker
        self.qa: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.reconciler: subprocess.Popen[bytes] | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._engine: Any = None
        self.key = ""
        # The session's (tests/conftest.py), or a key of its own when a benchmark starts this farm outside pytest.
        self.secret_key = os.environ.get("VOICEFARM_SECRET_KEY") or base64.urlsafe_b64encode(os.urandom(32)).decode()
        self.tenant_id = ""
        self._generation = Counter[str]()

    # services

    def start_services(self) -> None:
        started = time.monotonic()
        self.redis.start()
        if self.database == "postgresql":
            self.pg.start()
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.s3.start()
        s3_call(self.s3.storage().ensure_bucket)
        url = Settings(database_url=self.database_url).resolved_database_url()
        migrate(url)
        self._engine = make_engine(url)
        self._sessions = make_session_factory(self._engine)
        with transaction(self._sessions) as session:
            row, self.key = tenants.create_key(session, "faults")
            # Like the `local` tenant of ./run.sh: a clone asserts consent (consent_attested=true).
            consent.set_policy_by_id(session, row.tenant_id, consent.ATTESTED)
            self.tenant_id = row.tenant_id
        log(
            f"services up in {time.monotonic() - started:.1f}s ({self.database_url.split('@')[-1]}, "
            f"redis :{self.redis.port}, s3 :{self.s3.port})"
        )

    @property
    def database_url(self) -> str:
        if self.database == "sqlite":
            return f"sqlite:///{self.root / 'data' / 'voicefarm.db'}"
        return self.pg.url

    @property
    def sessions(self) -> sessionmaker[Session]:
        assert self._sessions is not None
        return self._sessions

    def env(self) -> dict[str, str]:
        return (
            os.environ
            | {
                "DATABASE_URL": self.database_url,
                "BROKER_URL": self.redis.url,
                "S3_ENDPOINT_URL": self.s3.url,
                "AWS_ACCESS_KEY_ID": self.s3.access_key,
                "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
                "AWS_REGION": "us-east-1",
                "VOICEFARM_S3_BUCKET": self.s3.bucket,
                "VOICEFARM_DATA_DIR": str(self.root / "data"),
                # Benchmarks start this farm outside pytest: it needs a secret key of its own (shared/secrets.py).
                "VOICEFARM_SECRET_KEY": self.secret_key,
                "VOICEFARM_PORT": str(self.port),
                "VOICEFARM_API_WORKERS": str(self.api_workers),
                "VOICEFARM_JOB_LEASE_S": str(self.lease_s),
                "VOICEFARM_RECONCILE_INTERVAL_S": str(self.reconcile_interval_s),
                # Outages are ridden out with retries at most this far apart (60 s in production).
                "VOICEFARM_RETRY_BACKOFF_MAX_S": "8",
                "PYTHONUNBUFFERED": "1",
            }
            | self.extra_env
        )

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self._generation[name] += 1
        path = self.logs / f"{name}-{self._generation[name]}.log"
        return services.spawn([*CLI, *args], env=self.env() | (env or {}), log_path=path)

    # farm processes

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start_api(self, timeout: float = 90) -> float:
        started = time.monotonic()
        if not self.port:
            self.port = services.free_port()
        self.api = self._spawn("api", "api")
        if not services.wait_until(self._healthy, timeout, self.api):
            raise AssertionError(f"API did not answer in {timeout:.0f}s:\n{self.log_tail('api')}")
        return time.monotonic() - started

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def stop_api(self) -> float:
        """SIGTERM (gunicorn finishes requests in flight), wait; returns how long it took."""
        assert self.api is not None
        started = time.monotonic()
        services.terminate(self.api, 30)
        self.api = None
        return time.monotonic() - started

    def start_worker(self, env: dict[str, str] | None = None) -> None:
        """`voicefarm worker --cpu N`: N Celery worker processes, each with its own engine."""
        self.worker = self._spawn("worker", "worker", "--cpu", str(self.worker_cpu), env=env)

    def wait_workers_ready(self, timeout: float = 120) -> None:
        """Every worker process has loaded its engine and registered."""
        from shared.models import Worker

        def ready() -> bool:
            with self.sessions() as session:
                return int(session.scalar(select(func.count()).select_from(Worker)) or 0) >= self.worker_cpu

        self.wait_until(ready, timeout, f"{self.worker_cpu} workers to register", 0.5)

    def worker_pids(self, name: str) -> list[int]:
        """The Celery processes (main and pool child) of the worker process named `name`."""
        pids = []
        for pid in descendants(self.worker.pid) if self.worker else []:
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if name.encode() in argv:
                    pids.append(pid)
        return pids

    def stop_worker(self) -> None:
        """SIGTERM: the supervisor stops Celery, which finishes its task first; stragglers are then killed."""
        if self.worker is not None:
            below = descendants(self.worker.pid)
            services.terminate(self.worker, 60)
            for pid in below:
                stat = _stat(pid)
                if stat is not None and alive(pid):
                    services.kill_group(stat[1])
            self.worker = None

    def kill9_worker(self) -> list[int]:
        assert self.worker is not None
        pids = kill9_tree(self.worker)
        self.worker = None
        return pids

    def start_reconciler(self) -> None:
        self.reconciler = self._spawn("reconcile", "reconcile")

    def start_qa_worker(self) -> None:
        self.qa = self._spawn("qa-worker", "qa-worker", "--concurrency", "1")

    def start_all(self) -> None:
        self.start_services()
        self.start_worker()
        self.start_reconciler()
        if self.qa_worker:
            self.start_qa_worker()
        api_s = self.start_api()
        log(f"api answering after {api_s:.1f}s")
        # The worker is ready once it ran a job: a warm-up job (its tenant is not the one the test checks).
        started = time.monotonic()
        with transaction(self.sessions) as session:
            _row, warm_key = tenants.create_key(session, "warmup")
        response = requests.post(
            f"{self.url}/v1/jobs", json={"text": "Hi.", "format": "wav"}, headers=_auth(warm_key), timeout=10
        )
        assert response.status_code == 202, response.text
        job = self.wait_terminal([response.json()["id"]], timeout=180)[response.json()["id"]]
        assert job["status"] == "succeeded", job
        self.wait_workers_ready()
        log(f"workers warm after {time.monotonic() - started:.1f}s")

    def stop_all(self) -> None:
        for proc in (self.api, self.reconciler, self.qa):
            if proc is not None:
                services.terminate(proc, 20)
        self.api = self.reconciler = self.qa = None
        if self.worker is not None:
            kill9_tree(self.worker)
            self.worker = None
        if self._engine is not None:
            self._engine.dispose()
        self.s3.stop()
        self.redis.stop()
        if self.database == "postgresql":
            self.pg.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, name: str, chars: int = 4000) -> str:
        parts = []
        for path in sorted(self.logs.glob(f"{name}-*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    # the client

    def headers(self, key: str | None = None) -> dict[str, str]:
        headers = _auth(self.key)
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def submit(self, text: str, key: str | None = None, timeout: float = 30, **fields: Any) -> Submission:
        key = key or uuid.uuid4().hex
        started = time.monotonic()
        try:
            response = requests.post(
                f"{self.url}/v1/jobs", json={"text": text, **fields}, headers=self.headers(key), timeout=timeout
            )
        except requests.RequestException:
            return Submission(key, 0, time.monotonic() - started)
        took = time.monotonic() - started
        sub = Submission(key, response.status_code, took, content_type=response.headers.get("Content-Type", ""))
        with contextlib.suppress(ValueError):
            body = response.json()
            sub.job_id = body.get("id") if response.status_code in (200, 202) else None
            sub.code = (body.get("error") or {}).get("code")
        return sub

    # the database and S3, read directly

    def jobs(self, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        query = select(Job).where(Job.tenant_id == self.tenant_id)
        if ids is not None:
            query = query.where(Job.id.in_(list(ids)))
        with self.sessions() as session:
            return {job.id: _row(job) for job in session.scalars(query)}

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if check():
                    return time.monotonic() - started
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_terminal(self, ids: Iterable[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
        ids = list(ids)
        deadline = time.monotonic() + timeout
        rows: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the database may be coming back
                with self.sessions() as session:
                    rows = {j.id: _row(j) for j in session.scalars(select(Job).where(Job.id.in_(ids)))}
                if len(rows) == len(ids) and all(r["status"] in TERMINAL for r in rows.values()):
                    return rows
            time.sleep(0.2)
        pending = {
            i: rows.get(i, {}).get("status", "missing") for i in ids if rows.get(i, {}).get("status") not in TERMINAL
        }
        raise AssertionError(
            f"{len(pending)} of {len(ids)} jobs not terminal after {timeout:.0f}s: {pending}\n"
            f"{self.log_tail('worker', 6000)}\n{self.log_tail('reconcile', 2000)}"
        )

    def s3_keys(self) -> list[str]:
        return s3_call(lambda: self.s3.storage().list_keys(f"jobs/{self.tenant_id}/"))

    def assert_exactly_once(self, accepted: Iterable[str], timeout: float = 180) -> dict[str, dict[str, Any]]:
        """Every accepted job succeeded, once: one row each and no other row for the tenant, one S3 object each
        (with the bytes its result names) and no other object; returns the rows."""
        accepted = sorted(set(accepted))
        rows = self.wait_terminal(accepted, timeout)
        bad = {
            i: (r["status"], r["error_code"], r["error_message"]) for i, r in rows.items() if r["status"] != "succeeded"
        }
        assert not bad, f"{len(bad)} of {len(rows)} accepted jobs did not succeed: {bad}\n" + self.log_tail(
            "worker", 6000
        )
        with self.sessions() as session:
            count = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == self.tenant_id))
            per_key = session.execute(
                select(Job.idempotency_key, func.count())
                .where(Job.tenant_id == self.tenant_id, Job.idempotency_key.is_not(None))
                .group_by(Job.idempotency_key)
                .having(func.count() > 1)
            ).all()
        assert count == len(accepted), f"{count} job rows for {len(accepted)} accepted jobs: duplicates or strays"
        assert not per_key, f"idempotency keys with more than one job: {per_key}"
        keys = self.s3_keys()
        want = {rows[i]["result"]["key"] for i in accepted}
        assert len(keys) == len(set(keys)) and set(keys) == want, (
            f"S3 holds {len(keys)} objects for {len(want)} jobs; missing {sorted(want - set(keys))[:5]}, "
            f"extra {sorted(set(keys) - want)[:5]}"
        )
        storage = self.s3.storage()

        for job_id in accepted:
            result = rows[job_id]["result"]
            assert result and result["key"].startswith(f"jobs/{self.tenant_id}/")
            # Its own object, or (a dedup cache hit) the very object the job that made the audio names.
            owner = result["key"].split("/")[2]
            assert owner == job_id or (result.get("cached") and rows[owner]["result"]["key"] == result["key"]), (
                f"{job_id}'s result names {result['key']}"
            )
            data = s3_call(functools.partial(storage.get, result["key"]))
            assert hashlib.sha256(data).hexdigest() == result["sha256"], f"object of {job_id} is not its result"
        return rows


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "attempts": job.attempts,
        "lost_attempts": job.lost_attempts,
        "transient_retries": job.transient_retries,
        "format": job.format,
        "result": job.result,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "idempotency_key": job.idempotency_key,
        "worker": job.worker,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }
