"""Looking after a farm, as `voicefarm` commands: qa-thresholds (a tenant's QA gate), doctor (this machine for the
configured engine) and reconcile (jobs the broker lost or dead workers left).

`register(sub)` adds each command's parser and its handler (`args.handler(args)` runs it; it returns the exit code).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shared.config import Settings, load_settings


def register(sub: Any) -> None:
    limits = sub.add_parser("qa-thresholds", help="show or set a tenant's QA gate thresholds (shared/qa.py)")
    limits.add_argument("tenant")
    limits.add_argument("values", nargs="?", help='JSON, e.g. \'{"max_wer": 0.2, "retakes": 1}\'; {} clears them')
    limits.set_defaults(handler=handle_qa_thresholds)

    doctor = sub.add_parser("doctor", help="check this machine for the configured engine: model, upstream, GPUs")
    doctor.add_argument("--per-gpu", type=int, default=1, metavar="N", help="plan N worker processes per GPU")
    doctor.add_argument("--load", action="store_true", help="also load the model once and time it")
    doctor.add_argument("--json", action="store_true", help="findings as JSON")
    doctor.set_defaults(handler=handle_doctor)

    rec = sub.add_parser("reconcile", help="re-enqueue jobs the broker lost and recover jobs of dead workers")
    rec.add_argument("--once", action="store_true", help="one pass, then exit")
    rec.set_defaults(handler=handle_reconcile)


def handle_qa_thresholds(args: argparse.Namespace) -> int:
    import json

    from pydantic import ValidationError

    from shared import qa, tenants
    from shared.db import make_engine, make_session_factory, transaction

    settings = load_settings()
    try:
        checked = qa.check_tenant_settings(json.loads(args.values)) if args.values is not None else None
    except (ValueError, ValidationError) as exc:  # bad JSON, an unknown threshold, a value out of range
        print(f"invalid thresholds: {exc}", file=sys.stderr)
        return 2
    sessions = make_session_factory(make_engine(settings.resolved_database_url()))
    with transaction(sessions) as session:
        row = tenants.get_or_create_tenant(session, args.tenant)
        if checked is not None:
            row.qa = checked or None
        print(json.dumps({"tenant": row.qa or {}, "effective": qa.thresholds(row.qa, None)}, indent=2))
    return 0


def handle_doctor(args: argparse.Namespace) -> int:
    from voicefarm.ops.doctor import run_doctor

    return run_doctor(load_settings(), per_gpu=args.per_gpu, load=args.load, as_json=args.json)


def handle_reconcile(args: argparse.Namespace) -> int:
    return reconcile(load_settings(), once=args.once)


def reconcile(settings: Settings, *, once: bool) -> int:
    import logging
    import signal
    import threading

    from shared import identity
    from shared.db import make_engine, make_session_factory
    from shared.logs import setup_logging
    from shared.queue import make_celery
    from shared.reconcile import Reconciler

    setup_logging(settings.log_format)  # JSON lines, as the API and the workers write them
    log = logging.getLogger("voicefarm.reconcile")
    farm_id = identity.claim_at_start(settings, bucket=False)
    sessions = make_session_factory(make_engine(settings.resolved_database_url()))
    reconciler = Reconciler.from_settings(settings, sessions, make_celery(settings), farm_id)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while True:
        try:
            if not reconciler.farm_id:  # the database could not name the farm at start
                reconciler.farm_id = identity.farm_id(settings, sessions)
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
