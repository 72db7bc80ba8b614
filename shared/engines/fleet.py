"""The engines the farm can serve right now: what live workers published, plus the farm's default engine.

Each worker writes the capabilities of the engine it loaded into its `workers` row when it registers; a worker
is live while its heartbeat is fresh (`worker_live_s`). The API validates every request against these. The
default engine (`VOICEFARM_ENGINE`) is always offered, from its static catalogue when no worker of it is live,
so a job submitted while workers restart waits in the queue instead of being refused.

This module is the one owner of the `workers` table: a worker registers, counts its jobs and beats its heartbeat
through it, and the API, the scheduler and the metrics read the live workers through it.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from shared.db import db_now
from shared.engines import Capabilities, catalogue, engine_names
from shared.errors import BadRequest
from shared.models import Worker


# -- a worker's own row ------------------------------------------------------------------------------------------
def register_worker(
    session: Session, name: str, *, engine: str, model: str, capabilities: dict[str, Any], device: str
) -> None:
    """Upsert a starting worker's row with what it serves (the API routes and validates by these capabilities);
    its figures start again from zero."""
    values = {
        "name": name,
        "engine": engine,
        "model": model,
        "capabilities": capabilities,
        "device": device,
        "started_at": db_now(session),
        "last_seen": db_now(session),
        "jobs_done": 0,
        "audio_seconds": 0.0,
        "compute_seconds": 0.0,
    }
    insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert  # type: ignore[union-attr]
    stmt = insert(Worker).values(**values)
    session.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))


def record_job(session: Session, name: str, audio_s: float, compute_s: float) -> None:
    """Count a finished job in the worker's figures, in the caller's transaction (the job's own finish)."""
    session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(
            jobs_done=Worker.jobs_done + 1,
            audio_seconds=Worker.audio_seconds + audio_s,
            compute_seconds=Worker.compute_seconds + compute_s,
            last_seen=db_now(session),
        )
    )


def heartbeat(session: Session, name: str) -> None:
    """The worker is alive now, by the database's clock (so is every liveness test below: a worker's own clock
    never decides whether it, or another, is live)."""
    session.execute(update(Worker).where(Worker.name == name).values(last_seen=db_now(session)))


# -- the live workers ---------------------------------------------------------------------------------------------
def _live(session: Session, live_s: float) -> Any:
    """A worker is live while its heartbeat is younger than `live_s`, by the database's clock."""
    return Worker.last_seen > db_now(session) - timedelta(seconds=live_s)


def live_rows(session: Session, live_s: float) -> list[Worker]:
    """The live workers' rows, by name."""
    return list(session.scalars(select(Worker).where(_live(session, live_s)).order_by(Worker.name)))


def live_count(session: Session, live_s: float) -> int:
    return int(session.scalar(select(func.count()).select_from(Worker).where(_live(session, live_s))) or 0)


def live_by_engine(session: Session, live_s: float) -> dict[str, int]:
    """Engine name -> how many of its workers are live."""
    query = select(Worker.engine, func.count()).where(_live(session, live_s)).group_by(Worker.engine)
    return {str(engine): int(n) for engine, n in session.execute(query)}


def live_engines(session: Session, live_s: float) -> dict[str, Capabilities]:
    """Engine name -> what its live workers serve (languages, modes and stock voices of all of them together)."""
    merged: dict[str, Capabilities] = {}
    for row in live_rows(session, live_s):
        if not row.capabilities:
            continue
        caps = Capabilities.from_json(row.capabilities)
        merged[caps.name] = _merge(merged[caps.name], caps) if caps.name in merged else caps
    return merged


def _merge(a: Capabilities, b: Capabilities) -> Capabilities:
    def union(x: tuple[str, ...], y: tuple[str, ...]) -> tuple[str, ...]:
        return x + tuple(v for v in y if v not in x)

    return Capabilities(
        name=a.name,
        languages=union(a.languages, b.languages),
        modes=union(a.modes, b.modes),
        sample_rate=a.sample_rate,
        max_segment_chars=min(a.max_segment_chars, b.max_segment_chars),
        stock_voices=union(a.stock_voices, b.stock_voices),
        default_voices=b.default_voices | a.default_voices,
        instructions=union(a.instructions, b.instructions),
        model=a.model if a.model == b.model else f"{a.model},{b.model}",
        speed_range=(max(a.speed_range[0], b.speed_range[0]), min(a.speed_range[1], b.speed_range[1])),
    )


class Fleet:
    """The engines on offer, read from the `workers` table and kept for `ttl_s` (several handlers ask per request).

    Give it a session factory of its own: a handler asks while it holds its own connection, so a refresh from the
    handlers' pool could wait on that pool forever under load. One thread refreshes at a time; the others wait
    for its answer, so the fleet never holds more than one connection."""

    def __init__(self, sessions: sessionmaker[Session], default_engine: str, live_s: float, ttl_s: float = 2.0):
        catalogue(default_engine)  # an unknown default engine is a configuration error, found at start
        self.sessions, self.default_engine, self.live_s, self.ttl_s = sessions, default_engine, live_s, ttl_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Capabilities]] | None = None

    def live(self) -> dict[str, Capabilities]:
        with self._lock:
            if self._cached is None or time.monotonic() - self._cached[0] >= self.ttl_s:
                with self.sessions() as session:
                    self._cached = (time.monotonic(), live_engines(session, self.live_s))
            return self._cached[1]

    def offered(self) -> dict[str, Capabilities]:
        """Engines with live workers, and the default engine whether or not one of its workers is live."""
        live = self.live()
        default = {self.default_engine: catalogue(self.default_engine).capabilities}
        return {name: live[name] for name in sorted(live)} | ({} if self.default_engine in live else default)

    @property
    def default(self) -> Capabilities:
        return self.offered()[self.default_engine]

    def engine(self, name: str) -> Capabilities:
        offered = self.offered()
        if name in offered:
            return offered[name]
        if name not in engine_names():
            raise BadRequest(f"unknown engine {name!r}; known: {', '.join(engine_names())}", code="unknown_engine")
        raise BadRequest(
            f"engine {name!r} has no live workers; this farm serves {', '.join(offered)}", code="engine_unavailable"
        )

    def for_request(self, engine: str | None, voice: str | None, voice_engine: str | None = None) -> Capabilities:
        """The engine a request goes to: the one it names, else its cloned voice's, else the one with its stock
        voice (the default engine first), else the default engine."""
        if engine is not None:
            return self.engine(engine)
        if voice_engine is not None:
            return self.engine(voice_engine)
        offered = self.offered()
        if voice is not None:
            ordered = sorted(offered.values(), key=lambda caps: caps.name != self.default_engine)
            for caps in ordered:
                if voice in caps.stock_voices:
                    return caps
        return offered[self.default_engine]

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None
