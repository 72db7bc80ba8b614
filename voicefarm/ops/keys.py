"""API keys as `voicefarm keys` commands: create, list, revoke, ensure-local.

`register(sub)` adds the parsers and their handlers (`args.handler(args)` runs one; it returns the exit code).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.config import load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    create.set_defaults(handler=handle_create)
    keys.add_parser("list", help="list keys (labels only)").set_defaults(handler=handle_list)
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=handle_revoke)
    local = keys.add_parser("ensure-local", help="create the local key file on first start")
    local.add_argument("--file", type=Path, help="default: $VOICEFARM_DATA_DIR/api_key")
    local.set_defaults(handler=handle_ensure_local)


@contextmanager
def _session(database_url: str) -> Iterator[Session]:
    from shared.db import make_engine, make_session_factory, transaction

    with transaction(make_session_factory(make_engine(database_url))) as session:
        yield session


def handle_create(args: argparse.Namespace) -> int:
    from shared import tenants

    with _session(load_settings().resolved_database_url()) as session:
        row, plaintext = tenants.create_key(session, args.tenant, args.name)
        print(f"created key {row.id} for tenant {args.tenant}; it is shown only now:")
        print(f"webhook signing secret (also at GET /v1/webhook-secret): {row.webhook_secret}")
        print(plaintext)
    return 0


def handle_list(args: argparse.Namespace) -> int:
    from shared import tenants

    with _session(load_settings().resolved_database_url()) as session:
        for key, tenant in tenants.list_keys(session):
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            print(f"{key.id}  {key.label:<12} tenant={tenant.name:<20} {state}  {key.name}")
    return 0


def handle_revoke(args: argparse.Namespace) -> int:
    from shared import tenants

    with _session(load_settings().resolved_database_url()) as session:
        tenants.revoke_key(session, args.key_id)
        print(f"revoked {args.key_id}")
    return 0


def handle_ensure_local(args: argparse.Namespace) -> int:
    from shared import tenants

    settings = load_settings()
    with _session(settings.resolved_database_url()) as session:
        path = args.file or settings.data_dir / "api_key"
        if path.exists() and tenants.key_is_valid(session, path.read_text().strip()):
            return 0
        _row, plaintext = tenants.create_key(session, "local", "created by ./run.sh")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plaintext + "\n")
        path.chmod(0o600)
        print(f"created a local API key in {path}")
    return 0
