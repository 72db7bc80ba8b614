"""Tenants' entitlements as `voicefarm tenants` commands: set-priority, list.

`register(sub)` adds the parsers and their handlers (`args.handler(args)` runs one; it returns the exit code).
A job priority above the default (5) is an entitlement (shared/admission.py): without it a request for more is
refused with 403 `priority_not_allowed`.
"""

from __future__ import annotations

import argparse
from typing import Any

from shared.config import load_settings


def register(sub: Any) -> None:
    tenants = sub.add_parser("tenants", help="tenants' entitlements").add_subparsers(
        dest="tenants_command", required=True
    )
    priority = tenants.add_parser(
        "set-priority", help="the highest job priority a tenant may ask for (0-9; the default is 5)"
    )
    priority.add_argument("tenant", help="the tenant's name (as `voicefarm keys create --tenant` named it)")
    priority.add_argument("priority", type=int, choices=range(10), metavar="PRIORITY")
    priority.set_defaults(handler=handle_set_priority)
    tenants.add_parser("list", help="tenants and the highest priority each may ask for").set_defaults(
        handler=handle_list
    )


def handle_set_priority(args: argparse.Namespace) -> int:
    from shared import admission
    from shared.db import make_engine, make_session_factory, transaction
    from shared.errors import NotFound

    engine = make_engine(load_settings().resolved_database_url())
    try:
        with transaction(make_session_factory(engine)) as session:
            tenant = admission.set_max_priority(session, args.tenant, args.priority)
            print(f"tenant {tenant.name} may ask for job priorities up to {tenant.max_priority}")
    except NotFound as exc:
        raise SystemExit(f"voicefarm tenants: {exc.message}") from None
    finally:
        engine.dispose()
    return 0


def handle_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from shared.db import make_engine, make_session_factory
    from shared.models import Tenant

    engine = make_engine(load_settings().resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            for tenant in session.scalars(select(Tenant).order_by(Tenant.name)):
                print(f"{tenant.name:<32} max_priority={tenant.max_priority}")
    finally:
        engine.dispose()
    return 0
