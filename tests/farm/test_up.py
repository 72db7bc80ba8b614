"""`voicefarm up` as a user runs it, all real processes: its CPU workers on the embedded PostgreSQL, a worker
that joins it from a second command, and no process left behind after SIGTERM mid-job or kill -9."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.faultfarm import alive, descendants, kill9_tree
from voicefarm.ops import services

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _eventually(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


FARM_STOP_TIMEOUT_S = 12.0
# Half a minute of speech or more: still running when the farm is told to stop.
LONG_TEXT = " ".join(
    ["The farm keeps every job in its database, and a worker that stops in the middle of one loses nothing."] * 6
)


class UpFarm:
    """`voicefarm up` in a data dir of its own, its services on free loopback ports."""

    def __init__(self, cpu_workers: int, **overrides: str) -> None:
        # Not under pytest's tmp dir: as root, PostgreSQL runs as its own OS user, which must reach the data dir.
        self.data_dir = Path(tempfile.mkdtemp(prefix="vf-up-"))
        self.data_dir.chmod(0o755)
        self.port = services.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VOICEFARM_", "AWS_"))}
        for name in ("DATABASE_URL", "BROKER_URL", "S3_ENDPOINT_URL"):
            env.pop(name, None)
        # What a user's shell would hold for both commands: no DATABASE_URL, so both find the embedded one.
        self.env = env | {
            "VOICEFARM_DATA_DIR": str(self.data_dir),
            "VOICEFARM_PORT": str(self.port),
            "BROKER_URL": f"redis://127.0.0.1:{services.free_port()}/0",
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{services.free_port()}",
            "VOICEFARM_API_WORKERS": "1",
            "VOICEFARM_STOP_TIMEOUT_S": str(FARM_STOP_TIMEOUT_S),
            "VOICEFARM_RECONCILE_INTERVAL_S": "2",
            "PYTHONUNBUFFERED": "1",
        }
        self.env |= overrides  # a test's own (tests/farm/test_two_farms.py: two farms naming one broker port)
        self.log_path = self.data_dir / "up.log"
        self.proc = self._spawn("up", VOICEFARM_CPU_WORKERS=str(cpu_workers))
        self.others: list[subprocess.Popen[bytes]] = []

    def _spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        out = open(self.data_dir / f"{args[0]}.log", "ab")  # the child gets its own copy
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "voicefarm.cli", *args],
                env=self.env | env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own: kill9_tree signals groups
            )
        finally:
            out.close()

    def join_worker(self, cpu: int) -> subprocess.Popen[bytes]:
        proc = self._spawn("worker", "--cpu", str(cpu))
        self.others.append(proc)
        return proc

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.data_dir.glob("*.log")))

    def tree(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def _get(self, path: str) -> Any:
        key = (self.data_dir / "api_key").read_text().strip()
        response = requests.get(
            f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def workers(self) -> dict[str, dict[str, Any]]:
        try:
            return {w["name"]: w for w in self._get("/v1/workers")["workers"]}
        except (OSError, ValueError, requests.RequestException):
            return {}

    def submit(self, text: str) -> str:
        key = (self.data_dir / "api_key").read_text().strip()
        response = requests.post(
            f"http://127.0.0.1:{self.port}/v1/jobs",
            json={"text": text},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def status(self, job_id: str) -> str:
        return str(self._get(f"/v1/jobs/{job_id}")["status"])

    def wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        if not _eventually(check, timeout):
            raise AssertionError(f"timed out waiting for {what}; logs:\n{self.log()}")

    def close(self) -> None:
        for proc in [self.proc, *self.others]:
            if proc.poll() is None:
                kill9_tree(proc)
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture
def up_farm() -> Iterator[Callable[..., UpFarm]]:
    farms: list[UpFarm] = []

    def start(cpu_workers: int, **env: str) -> UpFarm:
        farms.append(UpFarm(cpu_workers, **env))
        return farms[-1]

    yield start
    for farm in farms:
        farm.close()


def _niceness(pid: int) -> int | None:
    try:  # field 19 of /proc/PID/stat, counted after the parenthesised command name
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None


def _autogroup_nice(pid: int) -> int | None:
    """The nice value of the process's scheduler autogroup ("/autogroup-85 nice 0"); None without autogroups."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _gone_within(pids: list[int], seconds: float) -> float:
    """Seconds until none of pids is alive; fails past `seconds`, naming the survivors."""
    started = time.monotonic()
    while any(alive(pid) for pid in pids):
        if time.monotonic() - started > seconds:
            cmdlines = {}
            for pid in pids:
                with contextlib.suppress(OSError):
                    if alive(pid):
                        cmdlines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
            raise AssertionError(f"still running {seconds:.0f}s later: {cmdlines}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_up_runs_cpu_workers_on_embedded_postgres_and_sigterm_leaves_nothing(
    up_farm: Callable[[int], UpFarm],
) -> None:
    farm = up_farm(2)
    names = {f"kokoro-cpu0@{socket.gethostname()}", f"kokoro-cpu1@{socket.gethostname()}"}
    farm.wait(lambda: names <= set(farm.workers()), 300, "two workers in GET /v1/workers")
    assert (farm.data_dir / "postgres" / "PG_VERSION").exists()
    assert "database  PostgreSQL (embedded, data in" in (farm.data_dir / "up.log").read_text()
    # `up` says it waits for a worker, then that the farm is up once one is live, naming it.
    farm.wait(lambda: "voicefarm is up: " in (farm.data_dir / "up.log").read_text(), 30, "up to say the farm is up")
    said = (farm.data_dir / "up.log").read_text()
    assert said.index("waiting for a worker to load its engine") < said.index("voicefarm is up: ")
    assert any(name in said.split("voicefarm is up: ", 1)[1].splitlines()[0] for name in names)
    assert "Control socket listening" not in said  # gunicorn's control socket is off (not in the user's home)
    job = farm.submit(LONG_TEXT)
    farm.wait(lambda: farm.status(job) == "running", 120, "the long job to run")
    time.sleep(1.0)
    tree = farm.tree()
    assert len(tree) >= 10  # services, api, workers and their pool processes, reconciler, webhook worker
    # Engine and QA work run below the API (VOICEFARM_WORKER_NICE, 19 by default): submits are answered first.
    nice = {pid: _niceness(pid) for pid in tree}
    roles = {pid: _cmdline(pid) for pid in tree}
    engines = [pid for pid, cmd in roles.items() if "worker.main" in cmd or "worker.qa.main" in cmd]
    api = [pid for pid, cmd in roles.items() if "gunicorn" in cmd]
    assert engines and api, roles
    assert {nice[pid] for pid in engines} == {19} and {nice[pid] for pid in api} == {0}, (nice, roles)
    # With autogroups the CPU is shared between sessions first, whatever a process's nice value: each worker
    # leads its own session, and that group runs at nice 19 too (worker/niceness.py).
    if (
        Path("/proc/sys/kernel/sched_autogroup_enabled").exists()
        and Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    ):
        group = {pid: _autogroup_nice(pid) for pid in tree}
        assert {group[pid] for pid in engines} == {19} and {group[pid] for pid in api} == {0}, (group, roles)
    farm.proc.send_signal(signal.SIGTERM)
    took = _gone_within(tree, FARM_STOP_TIMEOUT_S + 1.0)  # the stop timeout, plus this loop's own latency
    assert farm.proc.wait(5) == 0
    print(f"SIGTERM with a job running: {len(tree)} processes gone in {took:.1f}s")


def test_a_worker_joins_a_running_farm_and_kill_9_of_up_leaves_nothing(up_farm: Callable[[int], UpFarm]) -> None:
    farm = up_farm(1)
    host = socket.gethostname()
    farm.wait(lambda: f"kokoro-cpu0@{host}" in farm.workers(), 300, "the farm's worker")
    # `./run.sh worker --cpu 1`: the same data dir and environment, no DATABASE_URL; it finds the farm's own
    # PostgreSQL from the data dir, takes the next free CPU slot and serves the farm's queue.
    joiner = farm.join_worker(1)
    farm.wait(lambda: f"kokoro-cpu1@{host}" in farm.workers(), 300, "the joining worker")
    jobs = [farm.submit(f"Line number {n} of the joining test.") for n in range(6)]
    farm.wait(lambda: all(farm.status(j) == "succeeded" for j in jobs), 300, "the jobs to succeed")
    done = {name: w["jobs_done"] for name, w in farm.workers().items()}
    assert done[f"kokoro-cpu1@{host}"] >= 1, done

    job = farm.submit(LONG_TEXT)
    farm.wait(lambda: farm.status(job) == "running", 120, "the long job to run")
    tree = farm.tree()
    farm.proc.kill()
    # SeaweedFS stops in about 1.2 s on SIGTERM here; once, with CI's whole suite running, it took over 5 s.
    took = _gone_within(tree, 10.0)
    print(f"kill -9 of voicefarm up: {len(tree)} processes gone in {took:.1f}s")
    # The joiner is a command of its own: it outlives the farm, and stops in its own time on SIGTERM.
    assert joiner.poll() is None
    joiner_tree = [joiner.pid, *descendants(joiner.pid)]
    joiner.send_signal(signal.SIGTERM)
    _gone_within(joiner_tree, FARM_STOP_TIMEOUT_S)
