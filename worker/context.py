"""Per-process resources of a worker, built once by the process hook and handed to every task."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from shared.audio.streaming import SegmentPublisher
from shared.config import Settings
from shared.db import make_engine, make_session_factory, transaction
from shared.engines import fleet
from shared.jobs import state as jobs
from shared.models import Job
from shared.provenance import watermark
from shared.storage import Storage
from worker.engines import create_engine, engine_options
from worker.engines.base import Engine, VoiceProfile
from worker.evaluators.asr import Transcriber
from worker.finisher import Finisher

log = logging.getLogger(__name__)


class AttemptOver(Exception):
    """A write of this attempt was refused: the job was canceled ("canceled") or the attempt lost its lease to
    another claim or the reconciler ("lease_lost"). The worker stops at once and writes nothing more."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
    # Sends a finished job's webhook (set by the Celery app; a no-op in tests that call tasks directly).
    notify: Callable[[str], None] = lambda job_id: None
    # Sends a stored take's check to the QA pool (set by the Celery app; tests that call tasks directly set it).
    send_check: Callable[[str], None] = lambda job_id: None
    # The attempt this process is running, whose lease the heartbeat renews with those the finisher holds.
    current: jobs.Attempt | None = None
    # Set by the Celery app: every upload and completion runs on the finisher's thread while the engine starts
    # its next job (worker/finisher.py). Tests that call tasks directly keep the finish in the caller.
    finish_behind: bool = False
    finisher: Finisher = field(init=False)
    # Streaming hook: each synthesized segment goes to the job's segment stream when a request streams it
    # (shared/audio/streaming.py); None where nothing streams (tests that call tasks directly).
    segments: SegmentPublisher | None = None
    # Profiles are small and immutable once built: keep the recent ones so a voice's jobs skip the S3 fetch.
    _profiles: OrderedDict[str, VoiceProfile] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.finisher = Finisher(self)

    def segment_done(self, attempt: jobs.Attempt, index: int, count: int, audio: np.ndarray) -> None:
        """Called by the synthesis loop after each segment: publish it for a streaming request, if any."""
        if self.segments is not None:
            rate = self.engine.capabilities.sample_rate
            self.segments.publish(attempt.job_id, attempt.number, index, count, audio, rate)

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
            segments=SegmentPublisher(settings.broker_url, watermark.embed if settings.watermark else None)
            if settings.broker_url.startswith("redis")
            else None,
        )
        ctx.storage.ensure_bucket()
        if settings.watermark:  # the watermark's weights, read now: a worker without them stops here, not per job
            watermark.network()
        if hasattr(engine, "calibration_store"):  # kokoro: stock-voice calibration shared through S3
            from worker.engines.kokoro.calibration import S3CalibrationStore

            engine.calibration_store = S3CalibrationStore(ctx.storage)
        ctx.register()
        return ctx

    def start(self) -> None:
        self.start_heartbeat()
        self.finisher.start()

    def register(self) -> None:
        """Upsert this worker's row with what it serves: the API routes and validates by these capabilities."""
        model = str(getattr(self.engine, "model_name", self.settings.engine))
        capabilities = dataclasses.replace(self.engine.capabilities, model=model).to_json()
        with transaction(self.sessions) as session:
            fleet.register_worker(
                session,
                self.name,
                engine=self.settings.engine,
                model=model,
                capabilities=capabilities,
                device=self.settings.device,
            )

    def start_heartbeat(self) -> None:
        threading.Thread(target=self._beat, name="voicefarm-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.finisher.stop()

    def claim(self, job_id: str) -> tuple[Job, jobs.Attempt] | None:
        with transaction(self.sessions) as session:
            claimed = jobs.claim(session, job_id, self.name, self.settings.job_lease_s, self.settings.max_attempts)
        if claimed is not None:
            self.current = claimed[1]
        return claimed

    def progress(self, attempt: jobs.Attempt, fraction: float) -> None:
        """Record progress (renewing the lease); raises `AttemptOver` when the attempt was canceled or lost.

        A database outage is ridden out: the work goes on, and the fenced completion decides in the end."""
        try:
            with transaction(self.sessions) as session:
                if jobs.set_progress(session, attempt, fraction, self.settings.job_lease_s):
                    return
                reason = jobs.refusal(session, attempt)
        except DBAPIError:
            log.warning("job %s: progress not recorded (database unavailable)", attempt.job_id)
            return
        raise AttemptOver(reason)

    def crash_point(self, point: str) -> None:
        """Test-only (`VOICEFARM_TEST_CRASH_AT`, a comma list): die like a kill -9 at each named point, once per
        point and data dir."""
        if point not in self.settings.testing.crash_at.split(","):
            return
        marker = self.settings.data_dir / f"crashed-{point}"
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            with marker.open("x"):
                pass
        except FileExistsError:
            return
        log.error("test crash point %s reached; killing this process", point)
        os.kill(os.getpid(), signal.SIGKILL)

    def _beat(self) -> None:
        while not self._stop.wait(min(HEARTBEAT_S, self.settings.job_lease_s / 3)):  # renew well before expiry
            held = [a for a in (self.current, *self.finisher.attempts()) if a is not None]
            try:
                with transaction(self.sessions) as session:
                    fleet.heartbeat(session, self.name)
                    for attempt in held:
                        # A refused renewal needs no action here: the attempt's next write is refused too.
                        jobs.renew_lease(session, attempt, self.settings.job_lease_s)
            except Exception:  # a database outage must not kill the worker; the next beat retries
                log.warning("heartbeat failed", exc_info=True)
