"""`VOICEFARM_LISTEN=ADDR voicefarm up`: the embedded services on a network address, with authentication on.

Without `listen` every embedded service is reachable from this host only (loopback, PostgreSQL's Unix socket). With
it, each is also opened on ADDR, and each asks for credentials that are generated once into the data dir's
`listen.json` (mode 0600) and kept across restarts:

  * PostgreSQL listens on ADDR:`postgres_port`; its host-based rules let exactly one role in over TCP, the workers'
    (`voicefarm_worker`, scram-sha-256), which may read and write the farm's tables but not create or alter any,
    and may not read the tables that hold credentials (API keys, join tokens). The farm's own processes keep the
    Unix socket (trust: the socket's mode 0700 is the lock).
  * Redis binds loopback and ADDR and asks every client for a password: the farm's own (the default user's) or the
    `worker` ACL user's, which has every command but the admin ones and FLUSHALL/FLUSHDB.
  * SeaweedFS keeps every listener on loopback (the master, volume and filer ports take no credentials); its S3
    port alone, which checks every request's signature, is relayed from ADDR (voicefarm/ops/relay.py). Besides the
    farm's own identity, a worker identity may read, write, list and tag the farm's bucket and nothing else.
  * The API (`voicefarm api`) binds ADDR besides its own host; it answered with API keys already, and POST /v1/join
    takes join tokens only.

`up` then publishes, in the data dir's `join.json` (mode 0600), the addresses on ADDR and the worker credentials
that POST /v1/join hands a joining worker (shared/engines/join.py).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from voicefarm.ops.supervisor import ChildSpec

if TYPE_CHECKING:
    from shared.config import Settings

WORKER_DB_ROLE = "voicefarm_worker"
WORKER_REDIS_USER = "worker"
# Tables a worker has no business reading: they hold credentials.
HIDDEN_TABLES = ("api_keys", "join_tokens")
READ_ONLY_TABLES = ("alembic_version", "farm_identity")
# libpq options of a joined worker's database connections: over a network a connection can hang (a link down, a
# host gone) where a Unix socket cannot; keepalives and a TCP user timeout turn that into an error the worker
# retries, instead of a write stuck for the kernel's quarter of an hour.
DB_LINK_OPTIONS = "connect_timeout=10&keepalives=1&keepalives_idle=10&keepalives_interval=5&keepalives_count=3" + (
    "&tcp_user_timeout=20000"
)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the first byte (a temp file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, 0o600)
    temp.replace(path)


def ensure_credentials(data_dir: Path) -> dict[str, str]:
    """The data dir's `listen.json`, made on the first start that listens: the services' passwords and keys."""
    from shared.config import LISTEN_FILE, listen_credentials

    found = listen_credentials(data_dir)
    wanted = {
        "redis_password": lambda: secrets.token_urlsafe(24),
        "redis_worker_password": lambda: secrets.token_urlsafe(24),
        "s3_access_key": lambda: "vf" + secrets.token_hex(9),
        "s3_secret_key": lambda: secrets.token_urlsafe(30),
        "s3_worker_access_key": lambda: "vfw" + secrets.token_hex(9),
        "s3_worker_secret_key": lambda: secrets.token_urlsafe(30),
        "db_worker_password": lambda: secrets.token_urlsafe(24),
    }
    if all(name in found for name in wanted):
        return found
    made = {name: found.get(name) or make() for name, make in wanted.items()}
    write_private(data_dir / LISTEN_FILE, json.dumps(made, indent=1))
    return made


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- Redis ----------------------------------------------------------------------------------------------------
def redis_auth_config(redis_dir: Path, creds: dict[str, str]) -> Path:
    """redis-server's first argument: the passwords (off the command line, where `ps` would show them)."""
    path = redis_dir / "auth.conf"
    lines = [
        f"requirepass {creds['redis_password']}",
        f"user {WORKER_REDIS_USER} on >{creds['redis_worker_password']} ~* &* +@all -@admin -flushall -flushdb",
    ]
    write_private(path, "\n".join(lines) + "\n")
    return path


# -- S3 -------------------------------------------------------------------------------------------------------
def worker_s3_identity(creds: dict[str, str], bucket: str) -> dict[str, object]:
    return {
        "name": "voicefarm-worker",
        "credentials": [{"accessKey": creds["s3_worker_access_key"], "secretKey": creds["s3_worker_secret_key"]}],
        "actions": [f"{action}:{bucket}" for action in ("Read", "Write", "List", "Tagging")],
    }


def s3_relay_spec(settings: Settings, logs: Path) -> ChildSpec:
    """ADDR:<S3 port> relayed to the embedded S3 on loopback."""
    from urllib.parse import urlsplit

    from voicefarm.ops import services

    parts = urlsplit(settings.s3_endpoint_url)
    port = parts.port or 80
    target = host_port(parts.hostname or "127.0.0.1", port)
    listen = settings.listen
    return ChildSpec(
        "s3-relay",
        [sys.executable, "-m", "voicefarm.ops.relay", host_port(listen, port), target],
        ready=lambda: services.port_open(port, listen),
        log_path=logs / "s3-relay.log",
    )


# -- PostgreSQL ------------------------------------------------------------------------------------------------
def postgres_listen_args(pgdata: Path, settings: Settings, uid: int | None, gid: int | None) -> list[str]:
    """The server options that open it on the listen address, with rules that let only the workers' role in over
    TCP, by password (written into the cluster's dir, owned by the server's user)."""
    hba = pgdata / "voicefarm_hba.conf"
    rules = [
        "# voicefarm: the Unix socket (mode 0700) for the farm's own processes; TCP for the workers' role only",
        "local all all trust",
        f"host voicefarm {WORKER_DB_ROLE} 0.0.0.0/0 scram-sha-256",
        f"host voicefarm {WORKER_DB_ROLE} ::/0 scram-sha-256",
    ]
    write_private(hba, "\n".join(rules) + "\n")
    if uid is not None and gid is not None:
        os.chown(hba, uid, gid)
    return [
        "-c",
        f"listen_addresses={settings.listen}",
        "-c",
        f"hba_file={hba}",
        "-c",
        "password_encryption=scram-sha-256",
    ]


def ensure_worker_role(admin_url: str, password: str) -> None:
    """The workers' role: log in with `password`; read and write the farm's tables (re-granted on every start, so
    tables of newer migrations are covered), never create or alter any, never read credentials."""
    import psycopg
    from psycopg import sql

    role = sql.Identifier(WORKER_DB_ROLE)
    # One transaction (leaving the block commits it): workers running meanwhile never see their grants half gone.
    with psycopg.connect(admin_url, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (WORKER_DB_ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                role, sql.Literal(password)
            )
        )
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC, {}").format(role))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE voicefarm TO {}").format(role))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
        tables = [
            row[0]
            for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        ]
        for table in tables:
            name = sql.Identifier(table)
            conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(name, role))
            if table in HIDDEN_TABLES:
                continue
            grant = "SELECT" if table in READ_ONLY_TABLES else "SELECT, INSERT, UPDATE, DELETE"
            conn.execute(sql.SQL("GRANT " + grant + " ON TABLE {} TO {}").format(name, role))
        conn.execute(sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(role))


# -- what joining workers are told -----------------------------------------------------------------------------
def publish_for_workers(data_dir: Path, settings: Settings, creds: dict[str, str]) -> Path:
    """The data dir's `join.json`: the services on the listen address, with the workers' credentials."""
    from urllib.parse import quote, urlsplit

    from shared.engines.join import JOIN_FILE

    host = settings.listen
    redis_port = urlsplit(settings.broker_url).port or 6379
    s3_port = urlsplit(settings.s3_endpoint_url).port or 80
    db_password = quote(creds["db_worker_password"], safe="")
    redis_password = quote(creds["redis_worker_password"], safe="")
    published = {
        "database_url": f"postgresql://{WORKER_DB_ROLE}:{db_password}@{host_port(host, settings.postgres_port)}"
        f"/voicefarm?{DB_LINK_OPTIONS}",
        "broker_url": f"redis://{WORKER_REDIS_USER}:{redis_password}@{host_port(host, redis_port)}/0",
        "s3_endpoint_url": f"http://{host_port(host, s3_port)}",
        "s3_access_key": creds["s3_worker_access_key"],
        "s3_secret_key": creds["s3_worker_secret_key"],
        "s3_bucket": settings.s3_bucket,
        "s3_region": settings.s3_region,
    }
    path = data_dir / JOIN_FILE
    write_private(path, json.dumps(published, indent=1))
    return path
