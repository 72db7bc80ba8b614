"""`voicefarm up`: the whole farm on one machine, kept alive until Ctrl-C.

Which services it starts itself (the rule, kept deliberately simple):
  * Redis, when `BROKER_URL` is a redis:// URL on a loopback host and nothing answers on its port yet. It then
    runs on that port with append-only persistence under `$VOICEFARM_DATA_DIR/redis`.
  * SeaweedFS (`weed mini`), when `S3_ENDPOINT_URL` is an http:// URL on a loopback host and nothing answers on
    its port yet. Data under `$VOICEFARM_DATA_DIR/s3`; the access/secret key from the settings are its only
    identity. Its internal ports (master, volume, filer, gRPC, admin) are remembered in `s3/ports.json`.
  Anything else (a remote host, or a loopback port already answering) is used as it is, never started.
The database needs no service: empty `DATABASE_URL` means SQLite under the data dir.

Then it runs, as `python -m voicefarm.cli ...`: `migrate` and `keys ensure-local` once, then `api`,
`worker --cpu 1` and `reconcile` for good. Any long-lived child that dies is restarted with exponential backoff.
On SIGINT or SIGTERM it stops the farm processes, then the services (reverse start order), and exits 0.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from voicefarm import services

if TYPE_CHECKING:
    import subprocess

    from shared.config import Settings

log = logging.getLogger("voicefarm.supervisor")

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    # Start-up waits for this before starting the next child (services must answer before the farm starts).
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 60.0
    log_path: Path | None = None  # None: the child writes to our terminal


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    failures: int = 0
    restarts: int = 0


class Supervisor:
    """Starts children in order, restarts any that die, stops them all in reverse order."""

    def __init__(
        self,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        stable_after: float = 30.0,
        stop_timeout: float = 20.0,
        poll_interval: float = 0.2,
    ) -> None:
        self.backoff_initial, self.backoff_max, self.stable_after = backoff_initial, backoff_max, stable_after
        self.stop_timeout, self.poll_interval = stop_timeout, poll_interval
        self._children: list[_Child] = []
        # A plain flag, not a threading.Event: setting an Event from a signal handler can deadlock.
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        if signum is not None and not self._stopping:
            log.info("got %s, stopping", signal.Signals(signum).name)
        self._stopping = True

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.request_stop)

    def pid(self, name: str) -> int | None:
        child = self._find(name)
        return child.proc.pid if child.proc is not None and child.proc.poll() is None else None

    def restarts(self, name: str) -> int:
        return self._find(name).restarts

    def _find(self, name: str) -> _Child:
        for child in self._children:
            if child.spec.name == name:
                return child
        raise KeyError(name)

    def add(self, spec: ChildSpec) -> bool:
        """Start a long-lived child now; True once it is ready (always, without a readiness check)."""
        child = _Child(spec)
        self._children.append(child)
        self._spawn(child)
        if spec.ready is None:
            return True
        ready = spec.ready
        ok = services.wait_until(lambda: self._stopping or ready(), spec.ready_timeout, child.proc)
        return ok and not self._stopping

    def run_once(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int | None:
        """Run a one-shot command to completion; None when a stop request interrupted it."""
        log.info("running %s", name)
        proc = services.spawn(argv, env=env)
        while proc.poll() is None:
            if self._stopping:
                services.terminate(proc, self.stop_timeout)
                return None
            time.sleep(self.poll_interval)
        return proc.returncode

    def _spawn(self, child: _Child) -> None:
        child.proc = services.spawn(child.spec.argv, env=child.spec.env, log_path=child.spec.log_path)
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.spec.name, child.proc.pid)

    def _check(self, child: _Child, now: float) -> None:
        if child.proc is not None and child.proc.poll() is not None:
            code, ran = child.proc.returncode, now - child.started_at
            # A child that ran a while had a one-off failure; one that keeps dying young backs off further.
            child.failures = 0 if ran >= self.stable_after else child.failures
            delay = min(self.backoff_initial * 2**child.failures, self.backoff_max)
            child.failures += 1
            # Stragglers of a dead child (gunicorn or celery pool processes) would hold its port or queue.
            services.kill_group(child.proc.pid)
            child.proc, child.next_start = None, now + delay
            log.warning("%s exited with code %s after %.1fs; restarting in %.1fs", child.spec.name, code, ran, delay)
        if child.proc is None and now >= child.next_start and not self._stopping:
            child.restarts += 1
            self._spawn(child)

    def run(self) -> int:
        """Keep every child alive until a stop is requested, then stop them all; returns the exit code (0)."""
        try:
            while not self._stopping:
                now = time.monotonic()
                for child in self._children:
                    self._check(child, now)
                time.sleep(self.poll_interval)
        finally:
            self.stop_all()
        return 0

    def stop_all(self) -> None:
        """Stop children newest first, so farm processes go before the services they use. Idempotent."""
        self._stopping = True
        for child in reversed(self._children):
            if child.proc is not None and child.proc.poll() is None:
                log.info("stopping %s (pid %d)", child.spec.name, child.proc.pid)
                code = services.terminate(child.proc, self.stop_timeout)
                services.kill_group(child.proc.pid)  # whatever of its group outlived it
                log.info("%s stopped (code %s)", child.spec.name, code)
            child.proc = None


# --- the farm ------------------------------------------------------------------------------------------------


def _loopback_port(url: str, schemes: tuple[str, ...], default_port: int) -> int | None:
    """The port to start an embedded service on, or None when the URL names something to use as it is."""
    parts = urlsplit(url)
    if parts.scheme not in schemes or parts.hostname not in LOOPBACK_HOSTS:
        return None
    port = parts.port or default_port
    return None if services.port_open(port) else port


_PREFERRED_WEED_PORTS = {
    "master": 9334,
    "master_grpc": 19334,
    "volume": 8081,
    "volume_grpc": 18081,
    "filer": 8889,
    "filer_grpc": 18889,
    "admin": 23647,
    "admin_grpc": 33647,
}


def _weed_ports(s3_dir: Path, s3_port: int) -> dict[str, int]:
    # Stable internal ports keep a restarted `weed mini` consistent with the state it saved; a port taken
    # by someone else since is replaced by a free one.
    path = s3_dir / "ports.json"
    saved: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
    wanted = {**_PREFERRED_WEED_PORTS, "s3_grpc": s3_port + 10000, **saved}
    ports = {name: (port if not services.port_open(port) else services.free_port()) for name, port in wanted.items()}
    path.write_text(json.dumps(ports, indent=1))
    return ports


def service_specs(settings: Settings, data_dir: Path) -> list[ChildSpec]:
    """The embedded services these settings call for (see the module docstring for the rule)."""
    specs: list[ChildSpec] = []
    logs = data_dir / "logs"
    redis_port = _loopback_port(settings.broker_url, ("redis",), 6379)
    if redis_port is not None:
        redis_dir = data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        specs.append(
            ChildSpec(
                "redis",
                services.redis_argv(redis_dir, redis_port, persistent=True),
                ready=lambda: services.redis_ready(redis_port),
                log_path=logs / "redis.log",
            )
        )
    s3_port = _loopback_port(settings.s3_endpoint_url, ("http",), 80)
    if s3_port is not None:
        s3_dir = data_dir / "s3"
        s3_dir.mkdir(parents=True, exist_ok=True)
        config = services.write_s3_identities(
            s3_dir / "identities.json", settings.s3_access_key, settings.s3_secret_key
        )
        argv = services.seaweedfs_argv(s3_dir, s3_port, config, _weed_ports(s3_dir, s3_port))
        url = settings.s3_endpoint_url
        specs.append(ChildSpec("seaweedfs", argv, ready=lambda: services.s3_ready(url), log_path=logs / "weed.log"))
    return specs


def farm_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """Our environment plus the resolved settings, under both the conventional and the VOICEFARM_ names."""
    env = dict(os.environ)
    pairs = {
        ("BROKER_URL", "VOICEFARM_BROKER_URL"): settings.broker_url,
        ("S3_ENDPOINT_URL", "VOICEFARM_S3_ENDPOINT_URL"): settings.s3_endpoint_url,
        ("AWS_ACCESS_KEY_ID", "VOICEFARM_S3_ACCESS_KEY"): settings.s3_access_key,
        ("AWS_SECRET_ACCESS_KEY", "VOICEFARM_S3_SECRET_KEY"): settings.s3_secret_key,
        ("AWS_REGION", "VOICEFARM_S3_REGION"): settings.s3_region,
        ("VOICEFARM_DATA_DIR",): str(data_dir),
        ("VOICEFARM_HOST",): settings.host,
        ("VOICEFARM_PORT",): str(settings.port),
        ("VOICEFARM_S3_BUCKET",): settings.s3_bucket,
        ("VOICEFARM_ENGINE",): settings.engine,
    }
    if settings.database_url:
        pairs[("DATABASE_URL", "VOICEFARM_DATABASE_URL")] = settings.database_url
    for names, value in pairs.items():
        env.update(dict.fromkeys(names, value))
    env["PYTHONUNBUFFERED"] = "1"  # child logs reach the terminal as they happen
    return env


def _banner(settings: Settings, data_dir: Path, embedded: list[str]) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    api, key_file = f"http://{host}:{settings.port}", data_dir / "api_key"

    def where(name: str, url: str) -> str:
        return f"{url} ({'embedded, data in ' + str(data_dir / name) if name in embedded else 'external'})"

    return "\n".join(
        [
            "",
            "=" * 72,
            "  voicefarm is up",
            f"  API       {api}/   (web UI at /, API docs at /openapi.json)",
            f"  API key   {key_file}",
            f"  broker    {where('redis', settings.broker_url)}",
            f"  storage   {where('s3', settings.s3_endpoint_url)}",
            f"  database  {settings.resolved_database_url().split('@')[-1]}",
            f"  logs      {data_dir / 'logs'}",
            "  try:",
            f'    curl -H "Authorization: Bearer $(cat {key_file})" {api}/v1/voices',
            "  Ctrl-C stops everything.",
            "=" * 72,
            "",
        ]
    )


def run_farm(settings: Settings) -> int:
    """Start services and farm processes, supervise them until SIGINT/SIGTERM; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(update={"data_dir": data_dir})
    env, cli = farm_env(settings, data_dir), [sys.executable, "-m", "voicefarm.cli"]
    sup = Supervisor()
    sup.install_signal_handlers()
    try:
        specs = service_specs(settings, data_dir)
        for spec in specs:
            if not sup.add(spec):
                if sup.stopping:
                    return 0
                log.error("%s did not start; see %s", spec.name, spec.log_path)
                return 1
        for args in (["migrate"], ["keys", "ensure-local"]):
            code = sup.run_once(" ".join(args), [*cli, *args], env)
            if code is None:
                return 0
            if code != 0:
                log.error("`voicefarm %s` failed with exit code %d", " ".join(args), code)
                return code
        api_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        if not sup.add(
            ChildSpec(
                "api", [*cli, "api"], env, ready=lambda: services.port_open(settings.port, api_host), ready_timeout=120
            )
        ):
            if sup.stopping:
                return 0
            log.warning("the API is not answering on port %d yet; it keeps being supervised", settings.port)
        sup.add(ChildSpec("worker", [*cli, "worker", "--cpu", "1"], env))
        sup.add(ChildSpec("reconciler", [*cli, "reconcile"], env))
        print(_banner(settings, data_dir, ["redis" if s.name == "redis" else "s3" for s in specs]), flush=True)
        return sup.run()
    finally:
        sup.stop_all()
