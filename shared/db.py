"""Engine and session factory for PostgreSQL (production) or SQLite (embedded), plus migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

_MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while a worker writes; busy_timeout rides out short write locks.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # pre_ping drops connections a PostgreSQL restart killed instead of failing the next request.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session, session.begin():
        yield session


# -- one clock: the database's ------------------------------------------------------------------------------------
# Every time comparison that decides who owns what (a lease, its expiry, a worker's liveness, a webhook attempt in
# flight) reads the database's clock, never the clock of the process asking: workers on several hosts disagree about
# the time, the database is one. See docs/operations/guarantees.md#one-clock.

# PostgreSQL's now() is the start of the transaction; SQLite's 'now' is the clock of the machine its file lives on
# (one machine, every process on it), with milliseconds.
_NOW_SQL = {"postgresql": "SELECT now()", "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"}
_NOW_KEY = "voicefarm_db_now"


def connection_now(conn: Connection) -> datetime:
    """The database's current time (timezone-aware UTC), read once per transaction of `conn`: every value a
    transaction computes from it (a lease's expiry, a cutoff) agrees, as PostgreSQL's now() does."""
    tx = conn.get_transaction()
    cached = conn.info.get(_NOW_KEY)
    if tx is not None and cached is not None and cached[0] is tx:
        return cached[1]
    raw = conn.execute(text(_NOW_SQL.get(conn.dialect.name, "SELECT CURRENT_TIMESTAMP"))).scalar_one()
    now = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    if tx is not None:
        conn.info[_NOW_KEY] = (tx, now)
    return now


def db_now(session: Session) -> datetime:
    """The database's current time in the session's transaction (see `connection_now`)."""
    return connection_now(session.connection())


# The session-level advisory lock `migrate` holds on PostgreSQL ("vfmigrate").
MIGRATION_LOCK = 0x7666_6D69_6772


def migrate(url: str) -> None:
    """Apply Alembic migrations up to head. On PostgreSQL under an advisory lock held on a connection of its own
    for the whole upgrade, so replicas that start together migrate one after the other: the first applies the
    migrations, the others wait and then find the schema at head."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if not url.startswith("postgresql"):
        command.upgrade(cfg, "head")  # SQLite: one file on one machine, its writers serialised by SQLite itself
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                command.upgrade(cfg, "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        engine.dispose()
