"""The farm's processes as `voicefarm` commands: up, migrate, api, worker, webhook-worker, qa-worker.

`register(sub)` adds each command's parser and its handler (`args.handler(args)` runs it; it returns the exit code).
Every handler reads the settings itself, so a command that is not run reads nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from shared.config import Settings, load_settings
from voicefarm.ops import join


def register(sub: Any) -> None:
    up = sub.add_parser("up", help="run the whole farm on this machine with embedded services (what ./run.sh does)")
    up.set_defaults(handler=handle_up)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(handler=handle_migrate)
    api = sub.add_parser("api", help="serve the API with gunicorn")
    api.add_argument("--workers", type=int, help="gunicorn worker processes (default: VOICEFARM_API_WORKERS or 2)")
    api.set_defaults(handler=handle_api)
    worker = sub.add_parser("worker", help="start synthesis workers")
    worker.add_argument("--gpus", help="'all' or a comma list of GPU indices: one worker process per GPU")
    worker.add_argument("--cpu", type=int, default=0, help="number of CPU worker processes")
    worker.add_argument("--per-gpu", type=int, default=1, metavar="N", help="processes pinned to each GPU (default 1)")
    worker.add_argument(
        "--join", metavar="URL", help="join the farm whose API is at URL (from another host; needs --token)"
    )
    worker.add_argument(
        "--token", help="--join: a join token from `voicefarm join-token` on the farm's host (or VOICEFARM_JOIN_TOKEN)"
    )
    worker.set_defaults(handler=handle_worker)
    join.register(sub)

    hooks = sub.add_parser("webhook-worker", help="deliver webhooks: a small worker pool on their own queue, no engine")
    hooks.add_argument("--concurrency", type=int, help="delivery processes (default: VOICEFARM_WEBHOOK_CONCURRENCY, 2)")
    hooks.set_defaults(handler=handle_webhook_worker)

    qa = sub.add_parser("qa-worker", help="the QA gate's checks: Whisper and a speaker encoder on their own queue")
    qa.add_argument("--concurrency", type=int, help="check processes (default: VOICEFARM_QA_CONCURRENCY, 1)")
    qa.set_defaults(handler=handle_qa_worker)


def handle_up(args: argparse.Namespace) -> int:
    from voicefarm.ops.farm import run_farm

    return run_farm(load_settings())


def handle_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    _migrate(settings)
    print("database is at the latest migration")
    return 0


def _migrate(settings: Settings) -> None:
    """Migrations, then the farm's id into the database when it has none (shared/identity.py)."""
    from shared import identity
    from shared.db import make_engine, make_session_factory, migrate

    url = settings.resolved_database_url()
    migrate(url)
    engine = make_engine(url)
    try:
        identity.record_farm_id(settings, make_session_factory(engine))
    finally:
        engine.dispose()


def _require_secret_key(settings: Settings) -> None:
    from shared.secrets import SecretKeyError, require_secret_key

    try:
        require_secret_key(settings)
    except SecretKeyError as exc:
        raise SystemExit(f"voicefarm: refusing to start: {exc}") from None


def handle_api(args: argparse.Namespace) -> int:
    # Migrations run before serving, so a new release never answers on an old schema.
    from shared import identity
    from shared.storage import Storage

    settings = load_settings()
    _require_secret_key(settings)
    _migrate(settings)
    Storage.from_settings(settings).ensure_bucket()
    identity.claim_at_start(settings)
    return _exec_api(settings, args.workers or settings.api_workers)


def handle_worker(args: argparse.Namespace) -> int:
    from shared import identity
    from voicefarm.ops.workers import run_workers

    settings, env = load_settings(), None
    token = args.token or settings.join_token
    if args.join or args.token:
        if not (args.join and token):
            raise SystemExit("voicefarm worker: --join URL needs --token TOKEN (or VOICEFARM_JOIN_TOKEN)")
        settings, env = join.joined_settings(join.ask_to_join(args.join, token), settings)
        print(f"joined the farm at {args.join} (farm id {settings.farm_id or 'unknown'})", flush=True)
    identity.claim_at_start(settings)
    joined = {"base_env": env} if env is not None else {}  # a joined host's workers get the farm's answer
    return run_workers(settings, gpus=args.gpus, cpu=args.cpu, per_gpu=args.per_gpu, **joined)


def handle_webhook_worker(args: argparse.Namespace) -> int:
    from shared import identity
    from shared.queue import WEBHOOK_QUEUE

    settings = load_settings()
    _require_secret_key(settings)  # it signs with the secrets the API sealed
    identity.claim_at_start(settings)
    concurrency = args.concurrency or settings.webhook_concurrency
    return _exec_celery_pool("worker.webhooks.main", WEBHOOK_QUEUE, concurrency, hostname="webhooks")


def handle_qa_worker(args: argparse.Namespace) -> int:
    from shared import identity
    from shared.queue import QA_QUEUE

    settings = load_settings()
    identity.claim_at_start(settings)
    return _exec_celery_pool("worker.qa.main", QA_QUEUE, args.concurrency or settings.qa_concurrency)


def _exec_celery_pool(module: str, queue: str, concurrency: int, *, hostname: str | None = None) -> int:
    """Become a Celery prefork pool of `module` on `queue`, named `<hostname or queue>-<pid>@<host>`."""
    argv = [
        sys.executable, "-m", "celery", "-A", module, "worker",
        "--queues", queue,
        "--concurrency", str(max(1, concurrency)),
        "--pool", "prefork",
        "--hostname", f"{hostname or queue}-{os.getpid()}@{socket.gethostname()}",
        "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    os.execv(sys.executable, argv)


def _exec_api(settings: Settings, workers: int) -> int:
    from voicefarm.ops.listen import host_port

    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{settings.host}:{settings.port}",
        # The listen address too (voicefarm/ops/listen.py): worker hosts join there, clients may call it.
        *(["--bind", host_port(settings.listen, settings.port)] if settings.listen not in ("", settings.host) else []),
        "--workers", str(workers),
        "--threads", str(settings.api_threads),  # speech streams take at most api_threads - api_reserved_threads
        "--timeout", "60",
        # Within the time `voicefarm up` gives the API to stop (Settings.stop_budget).
        "--graceful-timeout", str(int(settings.stop_budget(2))),
        "--access-logfile", "-",
        # Its control socket would sit in the user's home, shared by every farm on the host: the farm needs none.
        "--no-control-socket",
        "producer.wsgi:app",
    ]  # fmt: skip
    os.execv(sys.executable, argv)
