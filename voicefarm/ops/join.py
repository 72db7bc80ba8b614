"""Joining a farm from another host: `voicefarm join-token` on the farm's host, `voicefarm worker --join URL --token
TOKEN` on the worker host.

`join-token` (create, the default; `list`; `revoke ID`) manages the tokens of shared/engines/join.py straight in the
farm's database, like `voicefarm keys`. `worker --join` asks the farm's API (POST /v1/join) for what a worker needs
and runs the workers with it: the farm's services and credentials, and its farm-wide settings, over this host's
own settings; the engine from this host's settings when they name one, else the farm's. Nothing of the farm's is
shared on disk: the answer lives in the workers' environment, and only the labels' signing certificate and key
(files the engine needs by path) are kept, mode 0600, under this host's data dir (`joined/`). No API key ever
reaches this host.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

from shared.config import Settings, environment, load_settings

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `12h`, `7d`."""
    found = _DURATION.match(text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"a duration like 30m, 12h or 7d (got {text!r})")
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


def register(sub: Any) -> None:
    token = sub.add_parser(
        "join-token",
        help="make a token that lets a worker host join this farm (`voicefarm worker --join`); list or revoke them",
    )
    token.add_argument("action", nargs="?", choices=("create", "list", "revoke"), default="create")
    token.add_argument("token_id", nargs="?", help="revoke: the token's id (or a unique prefix of it)")
    token.add_argument("--expires", type=parse_duration, metavar="DURATION", help="create: valid for 30m, 12h, 7d...")
    token.add_argument("--name", default="", help="create: what the token is for (shown by list)")
    token.add_argument("--all", action="store_true", help="list: revoked tokens too")
    token.set_defaults(handler=handle_join_token)


def handle_join_token(args: argparse.Namespace) -> int:
    from shared.db import make_engine, make_session_factory, transaction
    from shared.engines import join
    from shared.errors import NotFound

    settings = load_settings()
    engine = make_engine(settings.resolved_database_url())
    sessions = make_session_factory(engine)
    try:
        with transaction(sessions) as session:
            if args.action == "create":
                view, token = join.create_token(session, name=args.name, expires_in=args.expires)
                expires = view.expires_at.isoformat(timespec="seconds") if view.expires_at else "never"
                print(token)
                print(f"join token {view.id} ({view.label}), expires {expires}", file=sys.stderr)
            elif args.action == "list":
                print(f"{'id':<32}  {'label':<11}  {'state':<7}  {'expires':<25}  {'uses':>4}  name")
                for view in join.list_tokens(session, include_revoked=args.all):
                    expires = view.expires_at.isoformat(timespec="seconds") if view.expires_at else "never"
                    print(
                        f"{view.id:<32}  {view.label:<11}  {view.state:<7}  {expires:<25}  {view.uses:>4}  {view.name}"
                    )
            else:
                if not args.token_id:
                    raise SystemExit("voicefarm join-token revoke: name the token's id (voicefarm join-token list)")
                try:
                    view = join.revoke_token(session, args.token_id)
                except NotFound as exc:
                    raise SystemExit(f"voicefarm join-token revoke: {exc.message}") from None
                print(f"revoked join token {view.id} ({view.label})")
    finally:
        engine.dispose()
    return 0


# -- the worker host -------------------------------------------------------------------------------------------
class JoinRefused(SystemExit):
    pass


def ask_to_join(url: str, token: str, timeout: float = 30.0) -> dict[str, Any]:
    """POST /v1/join at the farm's API; the answer, or SystemExit with the farm's reason."""
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/join",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise JoinRefused(f"voicefarm worker --join: the farm at {url} refused: {exc.code} {message}") from None
    except (OSError, ValueError) as exc:
        raise JoinRefused(f"voicefarm worker --join: no answer from {url}: {exc}") from None


def _env_names(name: str) -> tuple[str, ...]:
    """Every environment name setting `name` is read from (the conventional ones, e.g. DATABASE_URL, win over
    VOICEFARM_ ones in the settings: a joined worker sets them all)."""
    from pydantic import AliasChoices

    field = Settings.model_fields[name]
    alias = field.validation_alias
    names = [c for c in alias.choices if isinstance(c, str)] if isinstance(alias, AliasChoices) else []
    return tuple(names) or (f"VOICEFARM_{name.upper()}",)


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def joined_settings(answer: dict[str, Any], local: Settings) -> tuple[Settings, dict[str, str]]:
    """This host's settings with the farm's answer applied, and the environment for the workers."""
    from voicefarm.ops.listen import write_private

    values: dict[str, Any] = dict(answer.get("settings") or {})
    for name, value in (answer.get("defaults") or {}).items():
        if name not in local.model_fields_set:
            values[name] = value
    files = answer.get("files") or {}
    joined_dir = local.data_dir.resolve() / "joined"
    for name in ("c2pa_cert", "c2pa_key"):
        if name in files:
            path = joined_dir / f"{name.replace('_', '-')}.pem"
            write_private(path, str(files[name]))
            values[name] = str(path)
    known = {name: value for name, value in values.items() if name in Settings.model_fields}
    env = environment()
    for name, value in known.items():
        env.update(dict.fromkeys(_env_names(name), _env_text(value)))
    env["VOICEFARM_DATA_DIR"] = str(local.data_dir.resolve())
    return load_settings(**known), env
