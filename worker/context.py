"""Per-process resources of a worker, built once by the process hook and handed to every task."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from shared import jobs
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.models import Job, Worker, utcnow
from shared.storage import Storage
from worker.asr import Transcriber
from worker.engines import create_engine, engine_options
from worker.engines.base import Engine, VoiceProfile

log = logging.getLogger(__name__)
HEARTBEAT_S = 10.0
PROFILE_CACHE = 256


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    storage: Storage
    sessions: sessionmaker[Session]
    name: str
    _stop: threading.Event = field(default_factory=threading.Event)
    _transcriber: Transcriber | None = None
    # The job this process is running, whose lease the heartbeat renews.
    current_job: str | None = None
    # Profiles are small and immutable once built: keep the recent ones so a voice's jobs skip the S3 fetch.
    _profiles: OrderedDict[str, VoiceProfile] = field(default_factory=OrderedDict)

    def transcriber(self) -> Transcriber:
        if self._transcriber is None:
            self._transcriber = Transcriber(self.settings.data_dir / "cache")
        return self._transcriber

    def profile(self, key: str) -> VoiceProfile:
        if key in self._profiles:
            self._profiles.move_to_end(key)
            return self._profiles[key]
        profile = VoiceProfile(engine=self.settings.engine, data=self.storage.get(key))
        self._profiles[key] = profile
        while len(self._profiles) > PROFILE_CACHE:
            self._profiles.popitem(last=False)
        return profile

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        name = settings.worker_name or f"{settings.engine}@{socket.gethostname()}-{os.getpid()}"
        engine = create_engine(settings.engine, **engine_options(settings.engine, settings))
        engine.load()
        ctx = cls(
            settings=settings,
            engine=engine,
            storage=Storage.from_settings(settings),
            sessions=make_session_factory(make_engine(settings.resolved_database_url())),
            name=name,
        )
        ctx.storage.ensure_bucket()
        ctx.register()
        return ctx

    def register(self) -> None:
        values = {
            "name": self.name,
            "engine": self.settings.engine,
            "model": getattr(self.engine, "model_name", self.settings.engine),
            "device": self.settings.device,
            "started_at": utcnow(),
            "last_seen": utcnow(),
            "jobs_done": 0,
            "audio_seconds": 0.0,
            "compute_seconds": 0.0,
        }
        with transaction(self.sessions) as session:
            insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert  # type: ignore[union-attr]
            stmt = insert(Worker).values(**values)
            session.execute(stmt.on_conflict_do_update(index_elements=["name"], set_=values))

    def record_job(self, audio_s: float, compute_s: float) -> None:
        with transaction(self.sessions) as session:
            session.execute(
                update(Worker)
                .where(Worker.name == self.name)
                .values(
                    jobs_done=Worker.jobs_done + 1,
                    audio_seconds=Worker.audio_seconds + audio_s,
                    compute_seconds=Worker.compute_seconds + compute_s,
                    last_seen=utcnow(),
                )
            )

    def start_heartbeat(self) -> None:
        threading.Thread(target=self._beat, name="voicefarm-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    @contextmanager
    def attempt(self, job_id: str) -> Iterator[Job | None]:
        """Start an attempt at a job, renewing its lease until the block ends; yields None when the job is
        finished already or has just been quarantined."""
        job = self._claim(job_id)
        try:
            yield job
        finally:
            self.current_job = None

    def _claim(self, job_id: str) -> Job | None:
        with transaction(self.sessions) as session:
            job = jobs.start_attempt(session, job_id, self.name, self.settings.job_lease_s)
            if job is None:
                log.info("job %s already finished; skipping redelivery", job_id)
                return None
            if job.attempts > self.settings.max_attempts:
                message = f"the job was started {job.attempts - 1} times without finishing; it is not retried again"
                jobs.fail(session, job_id, "quarantined", message)
                log.error("job %s quarantined", job_id)
                return None
        self.current_job = job_id
        return job

    def _beat(self) -> None:
        while not self._stop.wait(min(HEARTBEAT_S, self.settings.job_lease_s / 3)):  # renew well before expiry
            try:
                with transaction(self.sessions) as session:
                    session.execute(update(Worker).where(Worker.name == self.name).values(last_seen=utcnow()))
                    if self.current_job is not None:
                        jobs.renew_lease(session, self.current_job, self.settings.job_lease_s)
            except Exception:  # a database outage must not kill the worker; the next beat retries
                log.warning("heartbeat failed", exc_info=True)
