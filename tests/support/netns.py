"""Hosts made of Linux network namespaces, for tests of a farm spread over several hosts (tests/farm/test_multihost.py).

A `Network` is a switch (a namespace holding a bridge) and hosts (a namespace each), each host joined to the switch
by a veth pair: the host's end `eth0` has an address from 198.18.0.0/15 (the range set aside for benchmarking
networks), the switch's end is a bridge port. Nothing is added to the namespace the tests run in. What a test does
to the network:
  * `link(host, up=False)`: the switch's end of the host's cable goes down: the host is cut off (its connections
    hang, nothing answers it), as with a pulled cable, and comes back with `up=True`;
  * `netem(host, delay_ms, loss_pct)`: latency and loss on both ends of its cable (`tc qdisc ... netem`; on a
    kernel without sch_netem the host's cable is swapped for a TAP pair joined by tests/support/wire.py, which
    delays and drops frames in user space, and swapped back by `clear_netem`);
  * `block_port(host, port)`: the host's packets to one TCP port are dropped (a one-sided partition: a policy
    route into a blackhole), `unblock(host, port)` lifts it.
Processes run on a host through `ip netns exec` (and `unshare --uts`, so each host has its own hostname, as real
hosts do); `Host.kill_all` SIGKILLs every process in its namespace at once (a host lost). The test's own calls to a
host's services go through `Host.call(fn)`: a thread of this process that entered the host's namespace (setns works
per thread for network namespaces), so the sockets it opens are the host's.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.config import embedded_postgres_url
from shared.db import make_engine, transaction
from shared.models import Job, Worker
from shared.storage import Storage
from tests.support import wire
from voicefarm.ops import services

IP = "/usr/sbin/ip"
TC = "/usr/sbin/tc"
SUBNET = "198.18.0"
T = TypeVar("T")


def available() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in (IP, TC):
        if not Path(tool).exists():
            return f"{tool} is missing (iproute2)"
    probe = f"vfprobe{uuid.uuid4().hex[:6]}"
    res = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True)
    if res.returncode != 0:
        return f"ip netns add failed: {res.stderr.strip()}"
    subprocess.run([IP, "netns", "del", probe], capture_output=True)
    return None


def netem_missing() -> str | None:
    """Why `tc qdisc ... netem` cannot run here (a kernel without sch_netem), or None."""
    probe = f"vfnetem{uuid.uuid4().hex[:6]}"
    sh(IP, "netns", "add", probe)
    try:
        res = sh(TC, "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", check=False)
        return None if res.returncode == 0 else f"tc netem: {res.stderr.strip()} (this kernel has no sch_netem)"
    finally:
        sh(IP, "netns", "del", probe, check=False)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


@dataclass
class Host:
    name: str  # the hostname its processes see
    netns: str
    addr: str
    switch_port: str  # its cable's end in the switch
    _executor: concurrent.futures.ThreadPoolExecutor | None = field(default=None, repr=False)

    def argv(self, argv: list[str]) -> list[str]:
        """`argv` run on this host: in its namespace, under its own hostname (no fork: the pid is the command's)."""
        hostname = 'hostname "$0" && exec "$@"'
        return [IP, "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", hostname, self.name, *argv]

    def spawn(self, argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        return services.spawn(self.argv(argv), env=env, log_path=log_path)

    def run(self, argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), env=env, capture_output=True, text=True, timeout=timeout)

    def pids(self) -> list[int]:
        out = sh(IP, "netns", "pids", self.netns, check=False).stdout
        return [int(word) for word in out.split() if word.isdigit()]

    def kill_all(self) -> list[int]:
        """SIGKILL every process in this host's namespace at once: the host is lost."""
        killed = self.pids()
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return killed

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run `fn` in a thread of this process that lives in this host's network namespace."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix=f"netns-{self.name}", initializer=wire.enter, initargs=(self.netns,)
            )
        return self._executor.submit(fn).result(timeout)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class Network:
    """A switch and the hosts on it; `close()` removes every namespace (killing what still runs in them)."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.switch = f"vf{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._kernel_netem: bool | None = None
        self._wires: dict[str, tuple[subprocess.Popen[str], str]] = {}  # host -> (wire.py, its veth's switch port)
        sh(IP, "netns", "add", self.switch)
        sh(IP, "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh(IP, "-n", self.switch, "link", "set", "br0", "up")
        sh(IP, "-n", self.switch, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        netns, port = f"vf{self.tag}-{name}", f"p{index}"
        sh(IP, "netns", "add", netns)
        sh(IP, "-n", netns, "link", "set", "lo", "up")
        # Made in the host's namespace, its peer moved to the switch: nothing appears in the tests' namespace.
        sh(IP, "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
        sh(IP, "-n", netns, "addr", "add", f"{SUBNET}.{index}/24", "dev", "eth0")
        sh(IP, "-n", netns, "link", "set", "eth0", "up")
        sh(IP, "-n", self.switch, "link", "set", port, "master", "br0")
        sh(IP, "-n", self.switch, "link", "set", port, "up")
        host = Host(name, netns, f"{SUBNET}.{index}", port)
        self.hosts[name] = host
        return host

    def link(self, host: Host, up: bool) -> None:
        sh(IP, "-n", self.switch, "link", "set", host.switch_port, "up" if up else "down")

    def netem(self, host: Host, delay_ms: float, loss_pct: float) -> str:
        """Latency and loss on both ends of the host's cable (so each way gets `delay_ms`, a round trip twice);
        which emulation carries it: "kernel" (tc netem) or "user space" (tests/support/wire.py)."""
        if self._kernel_netem is None:
            self._kernel_netem = netem_missing() is None
        if not self._kernel_netem:
            self._wire(host, delay_ms, loss_pct)
            return "user space"
        for netns, dev in ((host.netns, "eth0"), (self.switch, host.switch_port)):
            sh(TC, "-n", netns, "qdisc", "replace", "dev", dev, "root", "netem",
               "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%")  # fmt: skip
        return "kernel"

    def clear_netem(self, host: Host) -> None:
        if host.name in self._wires:
            self._unwire(host)
            return
        for netns, dev in ((host.netns, "eth0"), (self.switch, host.switch_port)):
            sh(TC, "-n", netns, "qdisc", "del", "dev", dev, "root", check=False)

    def _wire(self, host: Host, delay_ms: float, loss_pct: float) -> None:
        """Swap the host's veth cable for a TAP pair carried by wire.py: same MAC and address on the host's end, so
        the other hosts' ARP entries and every open connection carry on over the slow cable."""
        index = list(self.hosts).index(host.name) + 1
        veth_port, tap_port = host.switch_port, f"t{index}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.wire", "--end", f"{host.netns}:tap0",
             "--end", f"{self.switch}:{tap_port}", "--delay-ms", str(delay_ms), "--loss-pct", str(loss_pct),
             "--seed", str(index)],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RuntimeError(f"tests.support.wire did not start (exit {proc.wait()})")
        mac = json.loads(sh(IP, "-n", host.netns, "-j", "link", "show", "eth0").stdout)[0]["address"]
        sh(IP, "-n", self.switch, "link", "set", tap_port, "master", "br0")
        sh(IP, "-n", self.switch, "link", "set", tap_port, "up")
        sh(IP, "-n", self.switch, "link", "set", veth_port, "down")
        sh(IP, "-n", host.netns, "link", "set", "eth0", "down")
        sh(IP, "-n", host.netns, "addr", "del", f"{host.addr}/24", "dev", "eth0")
        sh(IP, "-n", host.netns, "link", "set", "tap0", "address", mac)
        sh(IP, "-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", "tap0")
        sh(IP, "-n", host.netns, "link", "set", "tap0", "up")
        host.switch_port = tap_port  # `link(host, up=False)` now pulls this cable
        self._wires[host.name] = (proc, veth_port)

    def _unwire(self, host: Host) -> None:
        proc, veth_port = self._wires.pop(host.name)
        sh(IP, "-n", host.netns, "link", "set", "tap0", "down", check=False)
        sh(IP, "-n", host.netns, "addr", "del", f"{host.addr}/24", "dev", "tap0", check=False)
        sh(IP, "-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", "eth0")
        sh(IP, "-n", host.netns, "link", "set", "eth0", "up")
        sh(IP, "-n", self.switch, "link", "set", veth_port, "up")
        host.switch_port = veth_port
        proc.terminate()  # its TAP devices go with it
        proc.wait(10)

    def block_port(self, host: Host, port: int) -> None:
        """Drop the host's packets to TCP `port` (anywhere), silently: it reaches everything else. A policy route
        (`ip rule ... dport PORT` into a table whose only route is a blackhole), so no netfilter module is needed."""
        table = str(port)
        sh(IP, "-n", host.netns, "route", "replace", "blackhole", "default", "table", table)
        sh(IP, "-n", host.netns, "rule", "add", "ipproto", "tcp", "dport", str(port), "table", table, "priority", "100")

    def unblock(self, host: Host, port: int) -> None:
        sh(IP, "-n", host.netns, "rule", "del", "priority", "100", check=False)
        sh(IP, "-n", host.netns, "route", "flush", "table", str(port), check=False)

    def close(self) -> None:
        for proc, _ in self._wires.values():
            proc.kill()
        for host in self.hosts.values():
            host.close()
            host.kill_all()
            sh(IP, "netns", "del", host.netns, check=False)
        sh(IP, "netns", "del", self.switch, check=False)


# --- a farm on these hosts ------------------------------------------------------------------------------------


def clean_environment() -> dict[str, str]:
    """This process's environment without any farm setting: a fresh host knows nothing of the farm."""
    farm_names = ("VOICEFARM_", "DATABASE_URL", "BROKER_URL", "S3_", "AWS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(farm_names)} | {"PYTHONUNBUFFERED": "1"}


class MultiHostFarm:
    """An API host running `voicefarm up` with `VOICEFARM_LISTEN` set and no engine worker of its own, and worker
    hosts joined to it with a token (`voicefarm worker --join`), every one a namespace of a `Network`; the commands
    are those of docs/operations/multi-host.md. The test reads the database through its Unix socket (a file, not a
    network address) and calls the API and S3 from inside the API host (`Host.call`)."""

    API_PORT = 7860

    def __init__(
        self,
        logs: Path,
        *,
        workers: tuple[str, ...] = ("w1", "w2"),
        settings: dict[str, str],
        worker_settings: dict[str, str] | None = None,
    ) -> None:
        """`settings`: the API host's; `worker_settings`: a worker host's own (the farm's come with the join)."""
        self.logs = logs
        self.net = Network()
        self.api = self.net.add_host("api")
        self.workers = {name: self.net.add_host(name) for name in workers}
        # PostgreSQL runs as its own OS user when we are root: the data dir must be reachable by it.
        self.root = Path(tempfile.mkdtemp(prefix="vf-mh-"))
        self.root.chmod(0o755)
        self.api_data = self.root / "api"
        self.api_data.mkdir()
        self.settings = settings
        self.worker_settings = worker_settings or {}
        self.token = ""  # the join token the hosts joined with
        self.up: subprocess.Popen[bytes] | None = None
        self.worker_procs: dict[str, subprocess.Popen[bytes]] = {}
        self._generation: dict[str, int] = {}
        self._engine: Any = None

    # processes

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "voicefarm.cli", *args]

    def api_env(self) -> dict[str, str]:
        return clean_environment() | {
            "VOICEFARM_DATA_DIR": str(self.api_data),
            "VOICEFARM_LISTEN": self.api.addr,
            "VOICEFARM_CPU_WORKERS": "0",
            **self.settings,
        }

    def _log(self, name: str) -> Path:
        self._generation[name] = self._generation.get(name, 0) + 1
        return self.logs / f"{name}-{self._generation[name]}.log"

    def start_api_host(self, timeout: float = 180) -> float:
        """`VOICEFARM_LISTEN=ADDR VOICEFARM_CPU_WORKERS=0 voicefarm up`; seconds until its API answers on ADDR."""
        started = time.monotonic()
        log_path = self._log("up")
        self.up = self.api.spawn(self.cli("up"), self.api_env(), log_path)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.up.poll() is not None:
                raise AssertionError(f"voicefarm up exited {self.up.returncode}:\n{self.tail('up')}")
            if (self.api_data / "join.json").exists() and self._answers():
                return time.monotonic() - started
            time.sleep(0.5)
        raise AssertionError(f"the API host did not come up in {timeout:.0f}s:\n{self.tail('up')}")

    def _answers(self) -> bool:
        def get() -> bool:
            try:
                url = f"http://{self.api.addr}:{self.API_PORT}/healthz"
                return requests.get(url, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        return self.api.call(get)

    def stop_api_host(self) -> None:
        if self.up is not None:
            services.terminate(self.up, 60)
            self.up = None

    def join_token(self, *args: str) -> str:
        res = self.api.run(self.cli("join-token", *args), self.api_env())
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout.strip()

    def worker_data(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def start_worker_host(
        self, name: str, token: str, *, env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()
    ) -> None:
        """`voicefarm worker --join http://ADDR:PORT --token TOKEN --cpu 1` on host `name` (`wrap`: a command
        prefix such as faketime's)."""
        host = self.workers[name]
        argv = self.cli("worker", "--join", f"http://{self.api.addr}:{self.API_PORT}", "--token", token, "--cpu", "1")
        worker_env = clean_environment() | {"VOICEFARM_DATA_DIR": str(self.worker_data(name))} | self.worker_settings
        worker_env |= env or {}
        self.worker_procs[name] = host.spawn([*wrap, *argv], worker_env, self._log(name))

    def stop_worker_host(self, name: str) -> None:
        proc = self.worker_procs.pop(name, None)
        if proc is not None:
            services.terminate(proc, 30)
        self.workers[name].kill_all()

    def close(self) -> None:
        for name in list(self.worker_procs):
            self.stop_worker_host(name)
        self.stop_api_host()
        if self._engine is not None:
            self._engine.dispose()
        self.net.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def tail(self, name: str, chars: int = 4000) -> str:
        parts = []
        for path in sorted(self.logs.glob(f"{name}-*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    # the database (its Unix socket) and S3 (from inside the API host)

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._engine is None:
            self._engine = make_engine(embedded_postgres_url(self.api_data))
        return sessionmaker(self._engine, expire_on_commit=False)

    def storage(self) -> Storage:
        creds = json.loads((self.api_data / "listen.json").read_text())
        url = "http://127.0.0.1:8333"
        return Storage(url, "voicefarm", creds["s3_access_key"], creds["s3_secret_key"], connect_timeout=2)

    # the client: a tenant per scenario, jobs submitted to the API from inside the API host

    def new_tenant(self, name: str) -> tuple[str, str]:
        with transaction(self.sessions) as session:
            row, key = tenants.create_key(session, name)
        return row.tenant_id, key

    def request(self, method: str, path: str, key: str, **options: Any) -> requests.Response:
        url = f"http://127.0.0.1:{self.API_PORT}{path}"
        headers = {"Authorization": f"Bearer {key}"}
        return self.api.call(lambda: requests.request(method, url, headers=headers, timeout=30, **options))

    def submit(self, key: str, text: str, **fields: Any) -> str:
        response = self.request("POST", "/v1/jobs", key, json={"text": text, "format": "wav", **fields})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def jobs(self, ids: list[str]) -> dict[str, Job]:
        with self.sessions() as session:
            return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}

    def live_workers(self, within_s: float = 10) -> list[str]:
        """Workers whose heartbeat is fresh (by the database's clock)."""
        with self.sessions() as session:
            now = session.scalar(select(func.now()))
            rows = session.scalars(select(Worker)).all()
            return sorted(w.name for w in rows if (now - w.last_seen).total_seconds() < within_s)

    def wait(self, check: Any, timeout: float, what: str | Callable[[], str], interval: float = 0.3) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with contextlib.suppress(Exception):
                if check():
                    return time.monotonic() - started
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")

    def wait_workers(self, names: tuple[str, ...], timeout: float = 240) -> float:
        """Every named worker host has a live worker (its engine loaded, registered, beating)."""

        def ready() -> bool:
            live = self.live_workers()
            return all(any(w.endswith(f"@{name}") for w in live) for name in names)

        return self.wait(ready, timeout, lambda: f"live workers on {names}:\n" + "".join(self.tail(n) for n in names))

    def wait_terminal(self, ids: list[str], timeout: float = 180) -> dict[str, Job]:
        terminal = ("succeeded", "failed", "canceled")
        self.wait(
            lambda: len(rows := self.jobs(ids)) == len(ids) and all(j.status in terminal for j in rows.values()),
            timeout,
            f"{len(ids)} jobs to finish",
        )
        return self.jobs(ids)

    def assert_once(self, tenant_id: str, ids: list[str], timeout: float = 180) -> dict[str, Job]:
        """Every job succeeded, once: one row each and no other for the tenant, one stored object each (the one
        its result names, with the bytes its sha256 names) and no other."""
        rows = self.wait_terminal(ids, timeout)
        bad = {i: (j.status, j.error_code, j.error_message) for i, j in rows.items() if j.status != "succeeded"}
        assert not bad, f"jobs that did not succeed: {bad}"
        with self.sessions() as session:
            count = session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id))
        assert count == len(ids), f"{count} job rows for {len(ids)} jobs"
        storage = self.storage()
        keys = self.api.call(lambda: storage.list_keys(f"jobs/{tenant_id}/"))
        want = {j.result["key"] for j in rows.values() if j.result}
        assert sorted(keys) == sorted(want), f"stored {sorted(keys)}, results name {sorted(want)}"
        for job in rows.values():
            assert job.result is not None
            data = self.api.call(lambda key=job.result["key"]: storage.get(key))
            assert hashlib.sha256(data).hexdigest() == job.result["sha256"], f"{job.id}: object is not its result"
        return rows
