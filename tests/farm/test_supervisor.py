"""The supervisor's process management, exercised with trivial children instead of the farm."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.config import Settings
from voicefarm.ops import services
from voicefarm.ops.farm import farm_env, service_specs
from voicefarm.ops.supervisor import ChildSpec, Supervisor

REPO = Path(__file__).resolve().parents[2]
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
    from voicefarm.ops.supervisor import ChildSpec, Supervisor

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
    from voicefarm.ops.supervisor import ChildSpec, Supervisor

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
    from voicefarm.ops.workers import claim_cpu_slots

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
    from voicefarm.ops.farm import farm_children
    from voicefarm.ops.workers import plan_workers

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
