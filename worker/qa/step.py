"""The QA gate's step, as a plain function the QA task calls and tests call directly.

A job in "checking" holds one stored take. `run_check` takes the check (a fenced lease on that take's attempt),
runs every check of worker/qa/checks.py on the stored audio, and then, through shared/jobs/state.py:
- the take passes: the job succeeds with it, `result.qa` saying so;
- it fails and re-takes are left: the job is queued again (`retake`) and sent to the engine for another take;
- it fails and none are left: the job succeeds with the best of its takes, `result.qa.passed` false and
  `needs_review` true, which the batch manifest shows. Not failed silently, not passed silently.
Every take's object is kept until the end, when all but the kept one are deleted. The hold is renewed while the
checks run, so a slow check is never re-sent by the reconciler; a re-sent check finds it held and does nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from shared import qa, voices
from shared.config import Settings
from shared.db import transaction
from shared.jobs import objects
from shared.jobs import state as jobs
from shared.models import Job, Tenant, Voice
from shared.storage import Storage
from worker.finisher import job_prefix
from worker.qa import checks

log = logging.getLogger(__name__)


@dataclass
class CheckContext:
    """What a check needs: settings, sessions, storage, the two models (loaded on first use), and callbacks to
    send a re-take and to announce a finished job (set by the QA app; no-ops in tests that call directly)."""

    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    name: str
    transcriber: checks.Transcribes
    encoder: checks.Embeds
    send_retake: Callable[[Job], None] = lambda job: None
    notify: Callable[[str], None] = lambda job_id: None
    _references: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)

    def reference(self, key: str) -> tuple[np.ndarray, int]:
        if key not in self._references:
            if len(self._references) > 64:
                self._references.clear()
            self._references[key] = checks.decode(self.storage.get(key), "wav", 24_000)
        return self._references[key]


@dataclass(frozen=True)
class _Take:
    number: int
    result: dict[str, Any]
    text: str
    language: str
    speed: float
    limits: dict[str, Any]
    reference_key: str | None
    takes: list[dict[str, Any]]


def run_check(ctx: CheckContext, job_id: str) -> str:
    """Check the job's waiting take; returns "passed", "retake", "needs_review" or why nothing was done."""
    with transaction(ctx.sessions) as session:
        loaded = _load(ctx, session, job_id)
    if loaded is None:
        return "skipped"
    take = loaded
    started = time.perf_counter()
    audio, rate = checks.decode(
        ctx.storage.get(take.result["key"]),
        take.result["format"],
        int(take.result["sample_rate"]),
        int(take.result.get("channels") or 1),
    )
    reference = ctx.reference(take.reference_key) if take.reference_key else None
    with _holding(ctx, job_id, take.number) as lost:
        if ctx.settings.testing.qa_check_delay_s:  # a test hook: a check that runs past its time limit
            time.sleep(ctx.settings.testing.qa_check_delay_s)
        report = checks.evaluate(
            audio,
            rate,
            text=take.text,
            language=take.language,
            speed=take.speed,
            limits=take.limits,
            transcriber=ctx.transcriber,
            encoder=ctx.encoder,
            reference=reference,
        )
    if lost.is_set():
        return "lease_lost"  # canceled, or another QA worker took the check: its writes would be refused anyway
    check_s = round(time.perf_counter() - started, 3)
    details = take.result.get("qa_take") or {}
    record = {
        "take": len(take.takes) + 1,
        "seed": details.get("seed"),
        "speed": details.get("speed"),
        "worker": details.get("worker"),
        "stored_at": details.get("stored_at"),
        "key": take.result["key"],
        "score": list(report.score()),
        "check_s": check_s,
        **report.to_dict(),
        "result": {k: v for k, v in take.result.items() if k != "qa_take"},
    }
    history = [*take.takes, record]
    if not report.passed and len(history) <= int(take.limits["retakes"]):
        return _retake(ctx, job_id, take.number, history)
    return _settle(ctx, job_id, take.number, history, report.passed)


@contextmanager
def _holding(ctx: CheckContext, job_id: str, number: int) -> Iterator[threading.Event]:
    """Renew the check's hold every third of the lease while the body runs; the event is set once it is lost."""
    stop, lost = threading.Event(), threading.Event()

    def renew() -> None:
        while not stop.wait(ctx.settings.job_lease_s / 3):
            try:
                with transaction(ctx.sessions) as session:
                    held = jobs.hold_check(session, job_id, number, ctx.name, ctx.settings.job_lease_s)
            except Exception:  # the database is down: try again next beat; the lease covers two missed beats
                log.warning("job %s: could not renew the check's hold", job_id, exc_info=True)
                continue
            if not held:
                lost.set()
                return

    beat = threading.Thread(target=renew, name=f"qa-hold-{job_id}", daemon=True)
    beat.start()
    try:
        yield lost
    finally:
        stop.set()
        beat.join()


def _load(ctx: CheckContext, session: Session, job_id: str) -> _Take | None:
    job = session.get(Job, job_id)
    if job is None or job.status != jobs.CHECKING or job.result is None:
        return None
    if not jobs.hold_check(session, job_id, job.attempts, ctx.name, ctx.settings.job_lease_s):
        return None
    tenant = session.get(Tenant, job.tenant_id)
    reference_key = None
    if voices.is_voice_id(job.voice):
        voice = session.get(Voice, job.voice)
        reference_key = voice.reference_key if voice is not None else None
    return _Take(
        number=job.attempts,
        result=dict(job.result),
        # The normalised text when the worker recorded one: that is what the engine was asked to say.
        text=str(job.result.get("normalized_text") or job.text),
        language=job.language,
        speed=float((job.result.get("qa_take") or {}).get("speed") or job.speed),
        limits=qa.thresholds(tenant.qa if tenant is not None else None, job.qa),
        reference_key=reference_key,
        takes=list(job.qa_takes or []),
    )


def _retake(ctx: CheckContext, job_id: str, number: int, history: list[dict[str, Any]]) -> str:
    with transaction(ctx.sessions) as session:
        if not jobs.retake(session, job_id, number, ctx.name, history):
            return "lease_lost"
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
    log.info("job %s: take %d failed the gate; another take", job_id, len(history))
    ctx.send_retake(job)
    return "retake"


def _settle(ctx: CheckContext, job_id: str, number: int, history: list[dict[str, Any]], passed: bool) -> str:
    best = history[-1] if passed else min(history, key=lambda t: tuple(t["score"]))
    summary = {
        "passed": passed,
        "needs_review": not passed,
        "takes": len(history),
        "kept_take": best["take"],
        "checks": best["checks"],
        "transcript": best["transcript"],
        "check_s": round(sum(t["check_s"] for t in history), 3),
        "history": [{k: t[k] for k in ("take", "passed", "seed", "speed")} for t in history],
    }
    result = best["result"] | {"qa": summary}
    kept = [{k: v for k, v in t.items() if k != "result"} for t in history]
    with transaction(ctx.sessions) as session:
        if not jobs.pass_check(session, job_id, number, ctx.name, result, kept):
            return "lease_lost"
        tenant_id = session.get(Job, job_id).tenant_id  # type: ignore[union-attr]
    try:
        # Takes not kept are objects no result names (shared/jobs/objects.py checks that no job does).
        others = [key for key in ctx.storage.list_keys(job_prefix(tenant_id, job_id)) if key != best["key"]]
        objects.delete_unreferenced(ctx.sessions, ctx.storage, others)
    except Exception:  # harmless if they stay
        log.warning("job %s: could not delete the takes it did not keep", job_id, exc_info=True)
    ctx.notify(job_id)
    outcome = "passed" if passed else "needs_review"
    log.info("job %s: %s after %d take(s), keeping take %d", job_id, outcome, len(history), best["take"])
    return outcome
