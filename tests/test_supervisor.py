"""The supervisor's process management, exercised with trivial children instead of the farm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.config import Settings
from voicefarm import services
from voicefarm.supervisor import ChildSpec, Supervisor, farm_env, service_specs

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
    for name in names:
        ready = lambda name=name: log.exists() and f"up {name}" in log.read_text()
        assert sup.add(ChildSpec(name, [sys.executable, "-c", child, name, str(log)], ready=ready))
    print(" ".join(str(sup.pid(name)) for name in names), flush=True)
    sys.exit(sup.run())
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_children_in_reverse_order_and_exits_0(tmp_path: Path, signum: int) -> None:
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
