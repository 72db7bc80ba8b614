"""One farm, one namespace: each farm has an identity (a random id) and claims its broker and its bucket with it.

Two farms on one broker would take each other's messages (a worker acks a job id its database does not know) and
hide each other's Redis data loss, so a farm writes its id into the Redis key `voicefarm:owner` and the S3 object
`.voicefarm-owner` of its bucket, and a process that finds another farm's id there refuses to start, naming that
farm and the fix (`voicefarm up` moves its embedded Redis or SeaweedFS to a port of its own instead: see
voicefarm/ops/farm.py).

The id is, in this order: `VOICEFARM_FARM_ID`; the `farm_id` file in the data dir (`voicefarm up` writes it and
hands the id to its children); the one row of `farm_identity` in the database (`voicefarm migrate` writes it), so
the processes of a production farm on many machines agree without a setting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.errors import VoicefarmError
from shared.models import FarmIdentity
from shared.storage import Storage

log = logging.getLogger(__name__)
OWNER_KEY = "voicefarm:owner"
OWNER_OBJECT = ".voicefarm-owner"
FARM_ID_FILE = "farm_id"


class FarmConflict(RuntimeError):
    """The broker or the bucket belongs to another farm."""

    def __init__(self, message: str, other: str) -> None:
        super().__init__(message)
        self.other = other


def new_farm_id() -> str:
    return "farm-" + secrets.token_hex(8)


def local_farm_id(data_dir: Path) -> str | None:
    """The id in the data dir's `farm_id` file, if there is one."""
    path = data_dir / FARM_ID_FILE
    with contextlib.suppress(OSError):
        return path.read_text().strip() or None
    return None


def ensure_local_farm_id(data_dir: Path) -> str:
    """The data dir's id, made on the first start of `voicefarm up` there (two starts at once agree on one)."""
    found = local_farm_id(data_dir)
    if found:
        return found
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{FARM_ID_FILE}.{secrets.token_hex(4)}"
    tmp.write_text(new_farm_id() + "\n")
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, data_dir / FARM_ID_FILE)
    finally:
        tmp.unlink()
    found = local_farm_id(data_dir)
    assert found
    return found


def stored_farm_id(sessions: sessionmaker[Session], wanted: str | None = None) -> str:
    """The database's farm id, written now (as `wanted`, else a new one) when it has none."""
    for _ in range(3):
        with sessions() as session:
            found = session.scalar(select(FarmIdentity.farm_id).order_by(FarmIdentity.created_at).limit(1))
            if found:
                return found
            session.add(FarmIdentity(farm_id=wanted or new_farm_id()))
            try:
                session.commit()
            except IntegrityError:  # another process wrote it first: read theirs
                session.rollback()
    raise RuntimeError("could not store the farm id")


def farm_id(settings: Settings, sessions: sessionmaker[Session] | None = None) -> str:
    """This farm's id (see the module docstring for the order); asks the database only when nothing else names it."""
    if settings.farm_id:
        return settings.farm_id
    local = local_farm_id(settings.data_dir)
    if local:
        return local
    if sessions is not None:
        return stored_farm_id(sessions)
    from shared.db import make_engine, make_session_factory

    engine = make_engine(settings.resolved_database_url())
    try:
        return stored_farm_id(make_session_factory(engine))
    finally:
        engine.dispose()


def record_farm_id(settings: Settings, sessions: sessionmaker[Session]) -> str:
    """`voicefarm migrate`: the database learns the farm's id (the setting's or the data dir's, else a new one),
    unless it knows one already; returns the database's."""
    wanted = settings.farm_id or local_farm_id(settings.data_dir)
    stored = stored_farm_id(sessions, wanted)
    if wanted and stored != wanted:
        log.warning(
            "the database names farm %s, this process farm %s (from %s); processes that rely on the database's "
            "id would claim the broker for the other",
            stored,
            wanted,
            "VOICEFARM_FARM_ID" if settings.farm_id else settings.data_dir / FARM_ID_FILE,
        )
    return stored


# --- the broker ------------------------------------------------------------------------------------------------


def broker_owner(client: redis.Redis) -> str | None:
    raw: Any = client.get(OWNER_KEY)
    return raw.decode() if isinstance(raw, bytes) else raw


def claim_broker(client: redis.Redis, farm: str) -> str:
    """Write our id unless one is there; returns the owner's id (ours when the claim held)."""
    pipe = client.pipeline(transaction=False)
    pipe.setnx(OWNER_KEY, farm)
    pipe.get(OWNER_KEY)
    raw: Any = pipe.execute()[1]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def broker_conflict(url: str, other: str, mine: str) -> FarmConflict:
    where = url.split("@")[-1]  # no password in the message
    return FarmConflict(
        f"the broker {where} belongs to another farm ({other}; the Redis key {OWNER_KEY}); this farm is {mine}. "
        "Two farms on one broker take each other's jobs. Give this farm a broker of its own: set BROKER_URL to "
        "another Redis database (redis://host:6379/1) or port; with `voicefarm up` on one machine, leave BROKER_URL "
        "unset (or set VOICEFARM_PORT, VOICEFARM_DATA_DIR and BROKER_URL apart from the other farm's).",
        other,
    )


# --- the bucket ------------------------------------------------------------------------------------------------


def bucket_owner(storage: Storage) -> str | None:
    if not storage.exists(OWNER_OBJECT):
        return None
    return storage.get(OWNER_OBJECT).decode(errors="replace").strip() or None


def claim_bucket(storage: Storage, farm: str) -> str:
    """Create the bucket if need be and write our id unless one is there; returns the owner's id."""
    storage.ensure_bucket()
    owner = bucket_owner(storage)
    if owner is None:
        storage.put(OWNER_OBJECT, farm.encode() + b"\n")
        owner = bucket_owner(storage)  # two farms writing at once: the last write wins, and the other sees it
    return owner or farm


def bucket_conflict(settings: Settings, other: str, mine: str) -> FarmConflict:
    return FarmConflict(
        f"the bucket {settings.s3_bucket} at {settings.s3_endpoint_url} belongs to another farm ({other}; the object "
        f"{OWNER_OBJECT}); this farm is {mine}. Two farms in one bucket would mix their audio. Give this farm a bucket "
        "of its own: set VOICEFARM_S3_BUCKET, or S3_ENDPOINT_URL to another storage; with `voicefarm up` on one "
        "machine, leave S3_ENDPOINT_URL unset.",
        other,
    )


# --- both, at a process's start --------------------------------------------------------------------------------


def claim(settings: Settings, farm: str, *, bucket: bool = True) -> None:
    """Claim the broker (and the bucket) for this farm; raises `FarmConflict` when another farm holds either. An
    unreachable one is passed over with a warning: a process waits out outages, and the reconciler claims the
    broker again on every pass."""
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=5, socket_connect_timeout=3)
    try:
        owner = claim_broker(client, farm)
    except redis.RedisError as exc:
        log.warning("could not check who owns the broker (%s); going on", exc)
        owner = farm
    finally:
        client.close()
    if owner != farm:
        raise broker_conflict(settings.broker_url, owner, farm)
    if not bucket:
        return
    try:
        owner = claim_bucket(Storage.from_settings(settings), farm)
    except VoicefarmError as exc:
        log.warning("could not check who owns the bucket (%s); going on", exc.message)
        return
    if owner != farm:
        raise bucket_conflict(settings, owner, farm)


def claim_at_start(settings: Settings, *, bucket: bool = True) -> str:
    """A farm process's start: this farm's id, with the broker (and bucket) claimed; a conflict ends the process
    with its message (exit code 1). An id the database cannot give now is "" (nothing claimed)."""
    try:
        farm = farm_id(settings)
    except SQLAlchemyError as exc:  # the database is down or not migrated yet: a later start checks
        log.warning("could not read the farm id from the database (%s); the broker is not checked now", exc)
        return ""
    try:
        claim(settings, farm, bucket=bucket)
    except FarmConflict as exc:
        raise SystemExit(f"voicefarm: refusing to start: {exc}") from None
    return farm
