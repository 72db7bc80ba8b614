"""Tenants' entitlements and defaults as `voicefarm tenants` commands: set-priority, set-disclosure, list.

`register(sub)` adds the parsers and their handlers (`args.handler(args)` runs one; it returns the exit code).
A job priority above the default (5) is an entitlement (shared/admission.py): without it a request for more is
refused with 403 `priority_not_allowed`. The spoken AI notice (shared/provenance/disclosure.py) a tenant's jobs
get when they do not ask for one is its default disclosure: none (the default), start or end. Its consent policy
(shared/provenance/consent.py, `set-consent`) decides what cloning a voice needs: verified (new tenants), attested
or off.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.config import load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


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
    notice = tenants.add_parser(
        "set-disclosure",
        help="the spoken AI notice a tenant's jobs get when they do not say: none (the default), start or end",
    )
    notice.add_argument("tenant", help="the tenant's name (as `voicefarm keys create --tenant` named it)")
    notice.add_argument("position", choices=("none", "start", "end"))
    notice.set_defaults(handler=handle_set_disclosure)
    consent = tenants.add_parser(
        "set-consent",
        help="what cloning a voice needs: verified (a statement read aloud by the speaker, checked; the default), "
        "attested (the key holder asserts consent) or off",
    )
    consent.add_argument("tenant", help="the tenant's name (as `voicefarm keys create --tenant` named it)")
    consent.add_argument("policy", choices=("verified", "attested", "off"))
    consent.set_defaults(handler=handle_set_consent)
    tenants.add_parser(
        "list", help="tenants, the highest priority each may ask for, its default notice and its consent policy"
    ).set_defaults(handler=handle_list)


def _set(change: Callable[[Session], str]) -> int:
    """Run one tenant change in a transaction on the farm's database and print what it says; an unknown tenant
    exits with the error's message."""
    from shared.db import make_engine, make_session_factory, transaction
    from shared.errors import NotFound

    engine = make_engine(load_settings().resolved_database_url())
    try:
        with transaction(make_session_factory(engine)) as session:
            print(change(session))
    except NotFound as exc:
        raise SystemExit(f"voicefarm tenants: {exc.message}") from None
    finally:
        engine.dispose()
    return 0


def handle_set_priority(args: argparse.Namespace) -> int:
    from shared import admission

    def change(session: Session) -> str:
        tenant = admission.set_max_priority(session, args.tenant, args.priority)
        return f"tenant {tenant.name} may ask for job priorities up to {tenant.max_priority}"

    return _set(change)


_NOTICES = {"none": "no spoken notice", "start": "a spoken notice at the start", "end": "a spoken notice at the end"}


def handle_set_disclosure(args: argparse.Namespace) -> int:
    from shared import tenants

    def change(session: Session) -> str:
        tenant = tenants.set_disclosure(session, args.tenant, args.position)
        return f"tenant {tenant.name}: jobs that do not say get {_NOTICES[tenant.disclosure]}"

    return _set(change)


def handle_set_consent(args: argparse.Namespace) -> int:
    from shared.provenance import consent

    def change(session: Session) -> str:
        tenant = consent.set_policy(session, args.tenant, args.policy)
        return f"tenant {tenant.name} clones voices with consent policy {tenant.consent_policy}"

    return _set(change)


def handle_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from shared.db import make_engine, make_session_factory
    from shared.models import Tenant

    engine = make_engine(load_settings().resolved_database_url())
    try:
        with make_session_factory(engine)() as session:
            for tenant in session.scalars(select(Tenant).order_by(Tenant.name)):
                print(
                    f"{tenant.name:<32} max_priority={tenant.max_priority} disclosure={tenant.disclosure}"
                    f" consent={tenant.consent_policy}"
                )
    finally:
        engine.dispose()
    return 0
