"""The `voicefarm` command: run the farm, its parts, and its admin tasks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shared.config import Settings, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return _run(args)


def build_parser() -> argparse.ArgumentParser:
    """Every command and option (tests/farm/test_deployment.py checks the deployment files' commands against it)."""
    parser = argparse.ArgumentParser(prog="voicefarm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("up", help="run the whole farm on this machine with embedded services (what ./run.sh does)")
    sub.add_parser("migrate", help="apply database migrations")
    api = sub.add_parser("api", help="serve the API with gunicorn")
    api.add_argument("--workers", type=int, help="gunicorn worker processes (default: VOICEFARM_API_WORKERS or 2)")
    worker = sub.add_parser("worker", help="start synthesis workers")
    worker.add_argument("--gpus", help="'all' or a comma list of GPU indices: one worker process per GPU")
    worker.add_argument("--cpu", type=int, default=0, help="number of CPU worker processes")
    worker.add_argument("--per-gpu", type=int, default=1, metavar="N", help="processes pinned to each GPU (default 1)")

    hooks = sub.add_parser("webhook-worker", help="deliver webhooks: a small worker pool on their own queue, no engine")
    hooks.add_argument("--concurrency", type=int, help="delivery processes (default: VOICEFARM_WEBHOOK_CONCURRENCY, 2)")

    qa = sub.add_parser("qa-worker", help="the QA gate's checks: Whisper and a speaker encoder on their own queue")
    qa.add_argument("--concurrency", type=int, help="check processes (default: VOICEFARM_QA_CONCURRENCY, 1)")
    limits = sub.add_parser("qa-thresholds", help="show or set a tenant's QA gate thresholds (shared/qa.py)")
    limits.add_argument("tenant")
    limits.add_argument("values", nargs="?", help='JSON, e.g. \'{"max_wer": 0.2, "retakes": 1}\'; {} clears them')

    doctor = sub.add_parser("doctor", help="check this machine for the configured engine: model, upstream, GPUs")
    doctor.add_argument("--per-gpu", type=int, default=1, metavar="N", help="plan N worker processes per GPU")
    doctor.add_argument("--load", action="store_true", help="also load the model once and time it")
    doctor.add_argument("--json", action="store_true", help="findings as JSON")

    rec = sub.add_parser("reconcile", help="re-enqueue jobs the broker lost and recover jobs of dead workers")
    rec.add_argument("--once", action="store_true", help="one pass, then exit")

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    keys.add_parser("list", help="list keys (labels only)")
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    local = keys.add_parser("ensure-local", help="create the local key file on first start")
    local.add_argument("--file", type=Path, help="default: $VOICEFARM_DATA_DIR/api_key")

    from voicefarm.client import commands as client_cli

    client_cli.add_commands(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    from voicefarm.client import commands as client_cli

    if args.command in client_cli.COMMANDS:  # they talk to a farm's API, not to its services
        return client_cli.run(args)
    settings = load_settings()
    if args.command == "up":
        from voicefarm.ops.farm import run_farm

        return run_farm(settings)
    if args.command == "migrate":
        from shared.db import migrate

        migrate(settings.resolved_database_url())
        print("database is at the latest migration")
        return 0
    if args.command == "api":
        # Migrations run before serving, so a new release never answers on an old schema.
        from shared.db import migrate
        from shared.storage import Storage

        migrate(settings.resolved_database_url())
        Storage.from_settings(settings).ensure_bucket()
        return _exec_api(settings, args.workers or settings.api_workers)
    if args.command == "worker":
        from voicefarm.ops.workers import run_workers

        return run_workers(settings, gpus=args.gpus, cpu=args.cpu, per_gpu=args.per_gpu)
    if args.command == "webhook-worker":
        return _exec_webhook_worker(args.concurrency or settings.webhook_concurrency)
    if args.command == "qa-worker":
        from shared.queue import QA_QUEUE

        return _exec_celery_pool("worker.qa.main", QA_QUEUE, args.concurrency or settings.qa_concurrency)
    if args.command == "qa-thresholds":
        return _qa_thresholds(settings, args.tenant, args.values)
    if args.command == "doctor":
        from voicefarm.ops.doctor import run_doctor

        return run_doctor(settings, per_gpu=args.per_gpu, load=args.load, as_json=args.json)
    if args.command == "reconcile":
        return _reconcile(settings, once=args.once)
    return _keys(settings, args)


def _reconcile(settings: Settings, *, once: bool) -> int:
    import logging
    import signal
    import threading

    from shared.db import make_engine, make_session_factory
    from shared.logs import setup_logging
    from shared.queue import make_celery
    from shared.reconcile import Reconciler

    setup_logging(settings.log_format)  # JSON lines, as the API and the workers write them
    log = logging.getLogger("voicefarm.reconcile")
    sessions = make_session_factory(make_engine(settings.resolved_database_url()))
    reconciler = Reconciler.from_settings(settings, sessions, make_celery(settings))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while True:
        try:
            report = reconciler.run_once()
            if once:
                print(report)
                return 0
        except Exception:  # an outage of the database or broker: try again next round
            log.warning("reconcile pass failed", exc_info=True)
            if once:
                return 1
        if stop.wait(settings.reconcile_interval_s):
            return 0


def _exec_webhook_worker(concurrency: int) -> int:
    import socket

    from shared.queue import WEBHOOK_QUEUE

    argv = [
        sys.executable, "-m", "celery", "-A", "worker.webhooks.main", "worker",
        "--queues", WEBHOOK_QUEUE,
        "--concurrency", str(max(1, concurrency)),
        "--pool", "prefork",
        "--hostname", f"webhooks-{os.getpid()}@{socket.gethostname()}",
        "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    os.execv(sys.executable, argv)


def _qa_thresholds(settings: Settings, tenant: str, values: str | None) -> int:
    import json

    from pydantic import ValidationError

    from shared import qa, tenants
    from shared.db import make_engine, make_session_factory, transaction

    try:
        checked = qa.check_tenant_settings(json.loads(values)) if values is not None else None
    except (ValueError, ValidationError) as exc:  # bad JSON, an unknown threshold, a value out of range
        print(f"invalid thresholds: {exc}", file=sys.stderr)
        return 2
    sessions = make_session_factory(make_engine(settings.resolved_database_url()))
    with transaction(sessions) as session:
        row = tenants.get_or_create_tenant(session, tenant)
        if checked is not None:
            row.qa = checked or None
        print(json.dumps({"tenant": row.qa or {}, "effective": qa.thresholds(row.qa, None)}, indent=2))
    return 0


def _exec_celery_pool(module: str, queue: str, concurrency: int) -> int:
    import socket

    argv = [
        sys.executable, "-m", "celery", "-A", module, "worker",
        "--queues", queue,
        "--concurrency", str(max(1, concurrency)),
        "--pool", "prefork",
        "--hostname", f"{queue}-{os.getpid()}@{socket.gethostname()}",
        "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    os.execv(sys.executable, argv)


def _exec_api(settings: Settings, workers: int) -> int:
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{settings.host}:{settings.port}",
        "--workers", str(workers),
        "--threads", "4",
        "--timeout", "60",
        # Within the time `voicefarm up` gives the API to stop (Settings.stop_budget).
        "--graceful-timeout", str(int(settings.stop_budget(2))),
        "--access-logfile", "-",
        "producer.wsgi:app",
    ]  # fmt: skip
    os.execv(sys.executable, argv)


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from shared import tenants
    from shared.db import make_engine, make_session_factory, transaction

    sessions = make_session_factory(make_engine(settings.resolved_database_url()))
    with transaction(sessions) as session:
        if args.keys_command == "create":
            row, plaintext = tenants.create_key(session, args.tenant, args.name)
            print(f"created key {row.id} for tenant {args.tenant}; it is shown only now:")
            print(f"webhook signing secret (also at GET /v1/webhook-secret): {row.webhook_secret}")
            print(plaintext)
        elif args.keys_command == "list":
            for key, tenant in tenants.list_keys(session):
                state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
                print(f"{key.id}  {key.label:<12} tenant={tenant.name:<20} {state}  {key.name}")
        elif args.keys_command == "revoke":
            tenants.revoke_key(session, args.key_id)
            print(f"revoked {args.key_id}")
        elif args.keys_command == "ensure-local":
            path = args.file or settings.data_dir / "api_key"
            if path.exists() and tenants.key_is_valid(session, path.read_text().strip()):
                return 0
            _row, plaintext = tenants.create_key(session, "local", "created by ./run.sh")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(plaintext + "\n")
            path.chmod(0o600)
            print(f"created a local API key in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
