"""The end of a synthesis attempt: upload the encoded audio, then record the result, both riding out outages.

An attempt uploads to its own object (`jobs/<tenant>/<job>/a<attempt>.<format>`) and then completes with a write
fenced on its attempt number, so a stale worker can never overwrite the winner's audio: the result names the one
object its own attempt wrote. A refused completion deletes the attempt's object.

When storage or the database is down at that moment, the encoded audio is kept in memory (up to
`finish_spool_bytes`) and a background thread retries the upload and the completion with capped, jittered
exponential backoff while the heartbeat keeps the attempt's lease. The engine moves on to the next job meanwhile,
and the synthesis is never repeated for an outage. (A retry library would block the caller; this loop has to
interleave many pending finishes in one thread, so it keeps its own schedule.)

In a Celery worker (`WorkerContext.finish_behind`) the same thread takes every finish, not only an outage's: the
upload and the completion (about 15 ms a job on loopback, docs/benchmarks/farm-bench.md) run while the engine starts
its next job, so the engine does not wait for them. The spool still bounds what is held: a finish that finds it full is
done in the engine's path, which slows a worker whose storage lags instead of letting memory grow. On a stop the
thread tries each held finish once more before the process exits; one that still fails is left to its lease, and
the job runs again.
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import transaction
from shared.engines import fleet
from shared.errors import Permanent, Transient, Unavailable
from shared.jobs import objects
from shared.jobs import state as jobs
from shared.storage import Storage

log = logging.getLogger(__name__)
TICK_S = 0.25
# How long a stopping worker waits for the finishes it holds (each tried once).
DRAIN_S = 10.0


def attempt_key(tenant_id: str, attempt: jobs.Attempt, fmt: str) -> str:
    return f"{job_prefix(tenant_id, attempt.job_id)}a{attempt.number}.{fmt}"


def job_prefix(tenant_id: str, job_id: str) -> str:
    return f"jobs/{tenant_id}/{job_id}/"


@dataclass
class Pending:
    attempt: jobs.Attempt
    tenant_id: str
    key: str
    data: bytes
    fmt: str
    result: dict[str, Any]
    audio_s: float
    compute_s: float
    uploaded: bool = False
    # A take for the QA gate (worker/takes.py): the job goes to "checking" instead of succeeding.
    check: bool = False
    tries: int = 0
    due: float = field(default_factory=time.monotonic)
    # The task's log context (job, tenant, batch ids), so the finisher thread's lines carry them too.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class Host(Protocol):
    """What the finisher needs of its worker process (worker/context.py `WorkerContext`)."""

    name: str
    settings: Settings
    storage: Storage
    sessions: sessionmaker[Session]
    finish_behind: bool

    @property
    def notify(self) -> Callable[[str], None]: ...  # sends a finished job's webhook
    @property
    def send_check(self) -> Callable[[str], None]: ...  # sends a stored take's check to the QA pool
    def crash_point(self, point: str) -> None: ...


class Finisher:
    def __init__(self, ctx: Host) -> None:
        self.ctx = ctx
        self._pending: list[Pending] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="voicefarm-finisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread once it has tried each finish it holds one more time (at most `DRAIN_S`)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(DRAIN_S)

    def attempts(self) -> list[jobs.Attempt]:
        with self._lock:
            return [p.attempt for p in self._pending]

    def finish(self, pending: Pending) -> str:
        """Upload and complete now; on an outage keep the audio and finish in the background ("deferred").
        Raises the outage when there is no room to keep it: the caller hands the job back. With
        `finish_behind`, hand it to the thread at once ("finishing") while the spool has room."""
        if self.ctx.finish_behind and self._thread is not None and self._hold(pending):
            return "finishing"
        try:
            return self._step(pending)
        except Transient as exc:
            with self._lock:
                held = sum(len(p.data) for p in self._pending)
                if held + len(pending.data) > self.ctx.settings.finish_spool_bytes:
                    raise
                self._schedule(pending)
                self._pending.append(pending)
            log.warning("job %s: %s; keeping the audio and retrying the finish", pending.attempt.job_id, exc)
            return "deferred"

    def _hold(self, pending: Pending) -> bool:
        with self._lock:
            if self._stop.is_set():
                return False
            held = sum(len(p.data) for p in self._pending)
            if held + len(pending.data) > self.ctx.settings.finish_spool_bytes:
                return False
            pending.due = time.monotonic()
            self._pending.append(pending)
        self._wake.set()
        return True

    def _step(self, p: Pending) -> str:
        ctx = self.ctx
        if not p.uploaded:
            if ctx.settings.testing.finish_delay_s and threading.current_thread() is self._thread:
                time.sleep(ctx.settings.testing.finish_delay_s)
            ctx.storage.put(p.key, p.data, p.fmt)
            p.uploaded = True
            ctx.crash_point("after_upload")
        ctx.crash_point("before_complete")
        if p.check:
            p.result["qa_take"]["stored_at"] = round(time.time(), 3)
        try:
            with transaction(ctx.sessions) as session:
                if p.check and jobs.to_checking(session, p.attempt, p.result, ctx.settings.job_lease_s):
                    reason = "checking"
                elif not p.check and jobs.complete(session, p.attempt, p.result):
                    reason = "succeeded"
                else:
                    reason = jobs.refusal(session, p.attempt)
                if reason in ("checking", "succeeded"):  # the worker's figures, in the same commit
                    fleet.record_job(session, ctx.name, p.audio_s, p.compute_s)
        except DBAPIError as exc:
            raise Unavailable("the job database is unavailable") from exc
        if reason == "checking":
            # The gate's pool takes it from here; the reconciler re-sends a check whose message was lost.
            self._best_effort(lambda: ctx.send_check(p.attempt.job_id), "send the take's check")
            return reason
        if reason != "succeeded":
            log.warning("job %s attempt %d: %s; deleting its audio", p.attempt.job_id, p.attempt.number, reason)
            self._best_effort(lambda: ctx.storage.delete(p.key), "delete a refused attempt's object")
            return reason
        ctx.notify(p.attempt.job_id)
        if p.attempt.number > 1:
            self._best_effort(lambda: self._drop_other_attempts(p), "delete earlier attempts' objects")
        return reason

    def _fail(self, p: Pending, code: str, message: str) -> str:
        try:
            with transaction(self.ctx.sessions) as session:
                if not jobs.fail(session, p.attempt, code, message):
                    return jobs.refusal(session, p.attempt)
        except DBAPIError:
            return "dropped"  # the lease lapses and the job runs again
        self.ctx.notify(p.attempt.job_id)
        return "failed"

    def _drop_other_attempts(self, p: Pending) -> None:
        # Earlier attempts that died after their upload left an object that no result names (and no job: checked).
        others = [k for k in self.ctx.storage.list_keys(job_prefix(p.tenant_id, p.attempt.job_id)) if k != p.key]
        objects.delete_unreferenced(self.ctx.sessions, self.ctx.storage, others)

    def _best_effort(self, fn: Any, what: str) -> None:
        try:
            fn()
        except Exception:
            log.warning("could not %s", what, exc_info=True)

    def _schedule(self, p: Pending) -> None:
        cap = self.ctx.settings.retry_backoff_max_s
        p.due = time.monotonic() + min(cap, 2.0**p.tries) * random.uniform(0.5, 1.0)
        p.tries += 1

    def _loop(self) -> None:
        while True:
            self._wake.wait(TICK_S)
            self._wake.clear()
            stopping = self._stop.is_set()
            with self._lock:
                due = [p for p in self._pending if stopping or p.due <= time.monotonic()]
            self._run(due, retry=not stopping)
            if stopping:
                return

    def _run(self, due: list[Pending], retry: bool) -> None:
        for p in due:
            p.context.run(self._settle, p, retry)

    def _settle(self, p: Pending, retry: bool) -> None:
        """One try at a held finish: done, failed or dropped ends it; an outage schedules the next try."""
        try:
            outcome = self._step(p)
        except Transient as exc:
            if retry:
                if not p.tries:
                    log.warning("job %s: %s; keeping the audio and retrying the finish", p.attempt.job_id, exc)
                self._schedule(p)
                return
            outcome = "left to its lease"  # stopping: the job runs again once its lease lapses
        except Permanent as exc:  # e.g. storage refused the upload (an S3 4xx): waiting will not help
            outcome = self._fail(p, exc.code, exc.message)
        except Exception:
            log.exception("job %s: finishing failed; the lease will lapse and the job rerun", p.attempt.job_id)
            outcome = "dropped"
        if p.tries:
            log.info("job %s: deferred finish %s after %d retries", p.attempt.job_id, outcome, p.tries)
        else:
            log.info("job %s: %s", p.attempt.job_id, outcome)
        with self._lock:
            self._pending.remove(p)
