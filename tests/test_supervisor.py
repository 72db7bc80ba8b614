"""The supervisor's process management, exercised with trivial children instead of the farm."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.config import Settings
from tests.faultfarm import alive, descendants, kill9_tree
from voicefarm import services
from voicefarm.farm import farm_env, service_specs
from voicefarm.supervisor import ChildSpec, Supervisor

REPO = Path(__file__).resolve().parent.parent
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def running() -> Iterator[Callable[[Supervisor], None]]:
    """Run a supervisor's loop in a thread; stop it (and check it returned 0) after the test."""
    started: list[tuple[Supervisor, threading.Thread, list[int]]] = []

    def start(sup: Supervisor) -> None:
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(sup.run()), daemon=True)
        thread.start()
        started.append((sup, thread, result))

    yield start
    for sup, thread, result in started:
        sup.request_stop()
        thread.join(15)
        assert not thread.is_alive() and result == [0]


def test_restarts_a_child_that_dies(running: Callable[[Supervisor], None]) -> None:
    sup = Supervisor(backoff_initial=0.05, poll_interval=0.02)
    assert sup.add(ChildSpec("sleeper", SLEEP))
    running(sup)
    first = sup.pid("sleeper")
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert _eventually(lambda: sup.pid("sleeper") not in (None, first))
    assert sup.restarts("sleeper") == 1
    second = sup.pid("sleeper")
    sup.request_stop()
    assert second is not None and _eventually(lambda: not _alive(second))


def test_backs_off_when_a_child_keeps_dying(running: Callable[[Supervisor], None]) -> None:
    sup = Supervisor(backoff_initial=0.1, backoff_max=0.4, stable_after=60, poll_interval=0.01)
    sup.add(ChildSpec("crasher", [sys.executable, "-c", "raise SystemExit(3)"]))
    running(sup)
    time.sleep(2.0)
    # Without backoff it would restart every poll (~100 times); with it, delays of 0.1, 0.2, 0.4, 0.4, ...
    assert 2 <= sup.restarts("crasher") <= 8


def test_stop_kills_a_child_that_ignores_sigterm() -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    )
    sup = Supervisor(stop_timeout=0.5)
    sup.add(ChildSpec("stubborn", [sys.executable, "-c", stubborn]))
    pid = sup.pid("stubborn")
    assert pid is not None
    time.sleep(0.5)  # let it install its handler, so SIGKILL is what ends it
    started = time.monotonic()
    sup.stop_all()
    sup.stop_all()  # idempotent
    assert time.monotonic() - started < 5
    assert not _alive(pid)


def test_run_once_returns_exit_code() -> None:
    sup = Supervisor(poll_interval=0.01)
    assert sup.run_once("ok", [sys.executable, "-c", "pass"]) == 0
    assert sup.run_once("fails", [sys.executable, "-c", "raise SystemExit(7)"]) == 7


SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from voicefarm.supervisor import ChildSpec, Supervisor

    log = Path(sys.argv[1])
    child = (
        "import signal, sys, time\\n"
        "name, log = sys.argv[1], sys.argv[2]\\n"
        "def bye(*_):\\n"
        "    open(log, 'a').write('stopped ' + name + '\\\\n')\\n"
        "    sys.exit(0)\\n"
        "signal.signal(signal.SIGTERM, bye)\\n"
        "open(log, 'a').write('up ' + name + '\\\\n')\\n"
        "time.sleep(600)\\n"
    )
    sup = Supervisor(poll_interval=0.02)
    sup.install_signal_handlers()
    names = ["service", "api", "worker"]
    for layer, name in enumerate(names):
        ready = lambda name=name: log.exists() and f"up {name}" in log.read_text()
        spec = ChildSpec(name, [sys.executable, "-c", child, name, str(log)], ready=ready, layer=layer)
        assert sup.add(spec)
    print(" ".join(str(sup.pid(name)) for name in names), flush=True)
    sys.exit(sup.run())
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_layers_in_reverse_order_and_exits_0(tmp_path: Path, signum: int) -> None:
    script, log = tmp_path / "sup.py", tmp_path / "events.log"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(log)], stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 3 and all(_alive(p) for p in pids)
        proc.send_signal(signum)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped = [line for line in log.read_text().splitlines() if line.startswith("stopped")]
    assert stopped == ["stopped worker", "stopped api", "stopped service"]
    assert not any(_alive(p) for p in pids)


def test_embedded_services_only_for_free_loopback_ports(tmp_path: Path) -> None:
    free_redis, free_s3 = services.free_port(), services.free_port()
    settings = Settings(
        data_dir=tmp_path,
        broker_url=f"redis://127.0.0.1:{free_redis}/0",
        s3_endpoint_url=f"http://localhost:{free_s3}",
    )
    specs = {spec.name: spec for spec in service_specs(settings, tmp_path)}
    assert set(specs) == {"redis", "seaweedfs"}
    assert str(free_redis) in specs["redis"].argv and "--appendonly" in specs["redis"].argv
    assert f"-s3.port={free_s3}" in specs["seaweedfs"].argv
    assert (tmp_path / "s3" / "ports.json").exists()

    remote = Settings(
        data_dir=tmp_path, broker_url="redis://redis.internal:6379/0", s3_endpoint_url="https://s3.example"
    )
    assert service_specs(remote, tmp_path) == []

    with _listening() as port:
        taken = Settings(
            data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{port}/0", s3_endpoint_url="https://s3.example"
        )
        assert service_specs(taken, tmp_path) == []


class _listening:
    """A loopback port with something listening on it."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self.sock.close()


def test_farm_env_exports_resolved_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:7000/0", s3_access_key="ak", port=9999)
    env = farm_env(settings, tmp_path)
    assert env["BROKER_URL"] == env["VOICEFARM_BROKER_URL"] == "redis://127.0.0.1:7000/0"
    assert env["AWS_ACCESS_KEY_ID"] == env["VOICEFARM_S3_ACCESS_KEY"] == "ak"
    assert env["VOICEFARM_DATA_DIR"] == str(tmp_path)
    assert env["VOICEFARM_PORT"] == "9999"


# --- stopping: layers, escalation, and the reaper ---------------------------------------------------------------


def _handler_child(on_term: str, on_quit: str = "pass") -> list[str]:
    """A child that runs `on_term` on SIGTERM and `on_quit` on SIGQUIT, and sleeps."""
    code = textwrap.dedent(
        f"""
        import signal, sys, time
        def term(*_):
            {on_term}
        def quit(*_):
            {on_quit}
        signal.signal(signal.SIGTERM, term)
        signal.signal(signal.SIGQUIT, quit)
        print("up", flush=True)
        time.sleep(600)
        """
    )
    return [sys.executable, "-c", code]


def test_one_layer_stops_together() -> None:
    # Each takes a second to stop: one after the other would take three.
    slow_stop = _handler_child("time.sleep(1.0); sys.exit(0)")
    sup = Supervisor(stop_timeout=10)
    for name in ("a", "b", "c"):
        sup.add(ChildSpec(name, slow_stop))
    time.sleep(0.8)  # handlers installed
    started = time.monotonic()
    sup.stop_all()
    assert 0.9 < time.monotonic() - started < 2.5


def test_stop_escalates_to_a_second_signal(tmp_path: Path) -> None:
    # Like a Celery worker: SIGTERM alone waits for the running job; SIGQUIT ends it.
    marker = tmp_path / "quit"
    child = _handler_child("pass", f"open({str(marker)!r}, 'w').close(); sys.exit(0)")
    sup = Supervisor(stop_timeout=10)
    sup.add(ChildSpec("celery", child, signal_group=False, stop_escalation=(0.5, signal.SIGQUIT)))
    time.sleep(0.8)
    started = time.monotonic()
    sup.stop_all()
    assert 0.4 < time.monotonic() - started < 3
    assert marker.exists()


ESCAPER = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    from voicefarm.supervisor import ChildSpec, Supervisor

    # The child starts a grandchild in a session of its own that ignores SIGTERM: neither the process group
    # nor a parent-death signal reaches it, only the reaper does.
    grandchild = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    child = (
        "import subprocess, sys, time\\n"
        f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}], start_new_session=True)\\n"
        "print(p.pid, flush=True)\\n"
        "time.sleep(600)\\n"
    )
    sup = Supervisor(poll_interval=0.02)
    sup.install_signal_handlers()
    out = sys.argv[1]
    sup.add(ChildSpec("child", [sys.executable, "-c", child], log_path=__import__("pathlib").Path(out)))
    print(sup.pid("child"), flush=True)
    sys.exit(sup.run())
    """
)


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_no_descendant_outlives_the_supervisor(tmp_path: Path, how: str) -> None:
    script, out = tmp_path / "sup.py", tmp_path / "child.out"
    script.write_text(ESCAPER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert _eventually(lambda: out.exists() and out.read_text().strip() != "")
        grandchild = int(out.read_text().split()[0])
        assert _alive(child) and _alive(grandchild)
        started = time.monotonic()
        proc.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGTERM)
        proc.wait(20)
        assert _eventually(lambda: not _alive(child) and not _alive(grandchild), 5)
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cpu_slots_are_claimed_per_data_dir(tmp_path: Path) -> None:
    from voicefarm.workers import claim_cpu_slots

    farm, farm_locks = claim_cpu_slots(tmp_path, 2)
    joiner, joiner_locks = claim_cpu_slots(tmp_path, 1)
    assert (farm, joiner) == ([0, 1], [2])
    for lock in farm_locks:
        lock.close()
    later, _ = claim_cpu_slots(tmp_path, 2)
    assert later == [0, 1]
    del joiner_locks


@pytest.mark.parametrize("stop_timeout_s", [30.0, 12.0])
def test_stop_timeouts_nest_and_come_from_one_setting(stop_timeout_s: float) -> None:
    from voicefarm.farm import farm_children
    from voicefarm.workers import plan_workers

    settings = Settings(stop_timeout_s=stop_timeout_s)
    children = {child.name: child for child in farm_children(settings, {})}
    celery = plan_workers(settings, gpus=[], cpu=1, host="h", base_env={})[0]
    assert celery.stop_escalation is not None and not celery.signal_group  # Celery stops its own pool
    # A Celery worker's warm shutdown < `voicefarm worker`'s stop timeout < what `up` gives it < up's own.
    worker_timeout = children["worker"].stop_timeout
    assert worker_timeout is not None
    assert celery.stop_escalation[0] < settings.stop_budget(2) < worker_timeout < settings.stop_timeout_s
    assert {child.stop_timeout for child in children.values()} == {worker_timeout}
    hooks = children["webhook-worker"]
    assert hooks.stop_escalation is not None and hooks.stop_escalation[0] < worker_timeout


# --- the farm, real processes: `voicefarm up` and a worker that joins it ----------------------------------------

FARM_STOP_TIMEOUT_S = 12.0
# Half a minute of speech or more: still running when the farm is told to stop.
LONG_TEXT = " ".join(
    ["The farm keeps every job in its database, and a worker that stops in the middle of one loses nothing."] * 6
)


class UpFarm:
    """`voicefarm up` in a data dir of its own, its services on free loopback ports."""

    def __init__(self, cpu_workers: int) -> None:
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
def up_farm() -> Iterator[Callable[[int], UpFarm]]:
    farms: list[UpFarm] = []

    def start(cpu_workers: int) -> UpFarm:
        farms.append(UpFarm(cpu_workers))
        return farms[-1]

    yield start
    for farm in farms:
        farm.close()


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


@pytest.mark.slow
def test_up_runs_cpu_workers_on_embedded_postgres_and_sigterm_leaves_nothing(
    up_farm: Callable[[int], UpFarm],
) -> None:
    farm = up_farm(2)
    names = {f"kokoro-cpu0@{socket.gethostname()}", f"kokoro-cpu1@{socket.gethostname()}"}
    farm.wait(lambda: names <= set(farm.workers()), 300, "two workers in GET /v1/workers")
    assert (farm.data_dir / "postgres" / "PG_VERSION").exists()
    assert "database  PostgreSQL (embedded, data in" in (farm.data_dir / "up.log").read_text()
    job = farm.submit(LONG_TEXT)
    farm.wait(lambda: farm.status(job) == "running", 120, "the long job to run")
    time.sleep(1.0)
    tree = farm.tree()
    assert len(tree) >= 10  # services, api, workers and their pool processes, reconciler, webhook worker
    farm.proc.send_signal(signal.SIGTERM)
    took = _gone_within(tree, FARM_STOP_TIMEOUT_S + 1.0)  # the stop timeout, plus this loop's own latency
    assert farm.proc.wait(5) == 0
    print(f"SIGTERM with a job running: {len(tree)} processes gone in {took:.1f}s")


@pytest.mark.slow
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
    took = _gone_within(tree, 5.0)
    print(f"kill -9 of voicefarm up: {len(tree)} processes gone in {took:.1f}s")
    # The joiner is a command of its own: it outlives the farm, and stops in its own time on SIGTERM.
    assert joiner.poll() is None
    joiner_tree = [joiner.pid, *descendants(joiner.pid)]
    joiner.send_signal(signal.SIGTERM)
    _gone_within(joiner_tree, FARM_STOP_TIMEOUT_S)
