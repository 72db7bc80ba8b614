"""API keys as `voicefarm keys` commands: create, list, revoke, ensure-local, reencrypt.

`register(sub)` adds the parsers and their handlers (`args.handler(args)` runs one; it returns the exit code).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.config import Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.secrets import SecretBox


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="")
    create.add_argument(
        "--operator", action="store_true", help="an operator key: it also reads the operator endpoints (/metrics)"
    )
    create.set_defaults(handler=handle_create)
    keys.add_parser("list", help="list keys (labels and roles only)").set_defaults(handler=handle_list)
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=handle_revoke)
    local = keys.add_parser("ensure-local", help="create the local key file on first start")
    local.add_argument("--file", type=Path, help="default: $VOICEFARM_DATA_DIR/api_key")
    local.set_defaults(handler=handle_ensure_local)
    keys.add_parser(
        "reencrypt", help="rewrite every stored webhook secret under the first key of VOICEFARM_SECRET_KEY"
    ).set_defaults(handler=handle_reencrypt)


@contextmanager
def _session(database_url: str) -> Iterator[Session]:
    from shared.db import make_engine, make_session_factory, transaction

    with transaction(make_session_factory(make_engine(database_url))) as session:
        yield session


def _secrets(settings: Settings) -> SecretBox:
    """The farm's secret keys; a farm without one cannot store a webhook secret (shared/secrets.py)."""
    from shared.secrets import SecretBox, SecretKeyError, require_secret_key

    try:
        require_secret_key(settings)
        return SecretBox.from_settings(settings)
    except SecretKeyError as exc:
        raise SystemExit(f"voicefarm keys: {exc}") from None


def handle_create(args: argparse.Namespace) -> int:
    from shared import tenants

    settings = load_settings()
    secrets = _secrets(settings)
    role = tenants.OPERATOR if args.operator else tenants.PLAIN
    with _session(settings.resolved_database_url()) as session:
        row, plaintext = tenants.create_key(session, args.tenant, args.name, role=role, secrets=secrets)
        print(f"created key {row.id} ({role}) for tenant {args.tenant}; it is shown only now:")
        print(f"webhook signing secret (also at GET /v1/webhook-secret): {secrets.open(row.webhook_secret)}")
        print(plaintext)
    return 0


def handle_list(args: argparse.Namespace) -> int:
    from shared import tenants

    with _session(load_settings().resolved_database_url()) as session:
        for key, tenant in tenants.list_keys(session):
            state = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
            print(f"{key.id}  {key.label:<12} {key.role:<8} tenant={tenant.name:<20} {state}  {key.name}")
    return 0


def handle_reencrypt(args: argparse.Namespace) -> int:
    from shared import tenants

    settings = load_settings()
    secrets = _secrets(settings)
    with _session(settings.resolved_database_url()) as session:
        changed = tenants.reencrypt_secrets(session, secrets)
    print(f"re-encrypted {changed} webhook secret(s) under the first key of VOICEFARM_SECRET_KEY")
    return 0


def handle_revoke(args: argparse.Namespace) -> int:
    from shared import tenants

    with _session(load_settings().resolved_database_url()) as session:
        tenants.revoke_key(session, args.key_id)
        print(f"revoked {args.key_id}")
    return 0


def handle_ensure_local(args: argparse.Namespace) -> int:
    from shared import admission, tenants
    from shared.provenance import consent

    settings = load_settings()
    secrets = _secrets(settings)
    with _session(settings.resolved_database_url()) as session:
        path = args.file or settings.data_dir / "api_key"
        existing = tenants.find_key(session, path.read_text().strip()) if path.exists() else None
        if existing is not None:
            existing.role = tenants.OPERATOR  # the local key reads /metrics (keys made before roles were plain)
            admission.entitle(session, existing.tenant_id)  # and its tenant may ask for any priority
            return 0
        row, plaintext = tenants.create_key(
            session, "local", "created by ./run.sh", role=tenants.OPERATOR, secrets=secrets
        )
        admission.entitle(session, row.tenant_id)
        # The quick start clones in one step: the key holder asserts consent (docs/guide/consent.md).
        consent.set_policy_by_id(session, row.tenant_id, consent.ATTESTED)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plaintext + "\n")
        path.chmod(0o600)
        print(f"created a local API key in {path}")
    return 0
