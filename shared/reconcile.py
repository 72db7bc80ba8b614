"""The reconciler: makes the broker agree with the database, which is the source of truth.

Each pass, every step bounded (by a page size or by the size of the fleet, never by the backlog):
- Running jobs whose lease lapsed (their worker died or froze) go back to queued and get a fresh message, or are
  quarantined once they have lost `max_attempts` attempts (`shared.jobs.state` owns that rule).
- Queued jobs whose send never reached the broker (`sent_at` is NULL: the API's send failed, or a retry could
  not be sent) are sent.
- Messages a dead worker had taken but never started sit in Redis's unacked set until the visibility timeout;
  the reconciler re-sends their queued jobs after about one lease instead and drops the dead entries.
- Queued jobs that were sent a while ago (`lost_after_s`) but whose message is in no list of their engine's queue
  and not in the unacked set (the broker dropped it, or another farm's worker sharing the broker took it) are
  sent again; the queue is read only while it is short (`LOST_SCAN` messages), so a long backlog costs nothing.
- When Redis lost its data (restarted empty: the reconciler's marker key is gone), every queued job is sent again,
  one page per pass, and the marker is set once the backlog has been walked. The marker is this farm's own
  (`voicefarm:broker-epoch:<farm id>`), and each pass claims the broker for the farm again (shared/identity.py).
- Takes waiting for the QA gate get their check sent again when the QA worker holding it let its lease lapse (it
  died), or, once the QA queue is empty, when no QA worker took it within its lease (the broker lost the
  message); `shared.jobs.state.lapsed_checks` renews the lease, so once per lease at most, and sends each with
  time limits for its take's duration (`shared.queue.CheckLimits`). A take whose check lost its lease
  `max_check_lapses` times is not sent again: it ends `needs_review` (`result.qa.reason: check_lapsed`).
- Terminal jobs whose webhook is owed but whose message was lost get it sent again; so do finished batches'
  final events (shared/jobs/settle.py).
- The batch scheduler tops up every tenant's window of batch lines (shared/batches/scheduler.py).
Re-sending is always safe: a job is claimed only when queued (or its lease lapsed), so a duplicate message finds
the job running or finished and does nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from shared import identity
from shared.batches import scheduler
from shared.config import Settings
from shared.db import db_now, transaction
from shared.jobs import state as jobs
from shared.models import Batch, Job, utcnow
from shared.queue import (
    BATCH_PRIORITY,
    QA_QUEUE,
    TASKS,
    CheckLimits,
    engine_queue,
    enqueue_batch_webhook,
    enqueue_check,
    enqueue_job,
    enqueue_webhook,
    queue_keys,
    send_priority,
)
from shared.webhooks import deliveries

log = logging.getLogger(__name__)
# Present while the broker still holds what the reconciler last walked; Redis restarted empty loses it. One per
# farm (epoch_key), so that a farm that walks its backlog after a data loss never hides the loss from another.
EPOCH_KEY = "voicefarm:broker-epoch"
# kombu's Redis transport keeps taken-but-unacked messages in this hash, with delivery times in the sorted set.
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"
PAGE = 500
# The most messages a pass reads from one engine's queue (and from the unacked set) to find lost messages.
LOST_SCAN = 2000


def epoch_key(farm_id: str) -> str:
    """The farm's broker marker (the bare name for a reconciler that knows no farm id)."""
    return f"{EPOCH_KEY}:{farm_id}" if farm_id else EPOCH_KEY


@dataclass
class Report:
    recovered_expired: int = 0
    quarantined: int = 0
    sent_unsent: int = 0
    resent_stale_unacked: int = 0
    resent_after_broker_loss: int = 0
    resent_lost: int = 0
    webhooks_sent: int = 0
    batch_lines_sent: int = 0
    checks_resent: int = 0
    checks_lapsed: int = 0

    def any(self) -> bool:
        return any(vars(self).values())


def stale_unacked_s(settings: Settings) -> float:
    """How long a message may sit unacked while its job is queued: a worker's countdown retries are held that
    long at most, so anything older belongs to a worker that is gone."""
    return settings.job_lease_s + settings.retry_backoff_max_s + 10.0


@dataclass
class Reconciler:
    sessions: sessionmaker[Session]
    celery: Celery
    max_attempts: int
    # A message unacked longer than this whose job is still queued was taken by a worker that is gone.
    stale_unacked_s: float
    # A job younger than this may still be between its commit and its own send.
    grace_s: float = 10.0
    # The batch scheduler's window: lines per live worker, and how recent a live worker's heartbeat is.
    batch_window_per_worker: int = 2
    worker_live_s: float = 60.0
    # How long a QA check holds its take before the reconciler sends it again.
    check_lease_s: float = 60.0
    # A take whose check lapsed this many times ends needs_review; and the time limits each re-sent check gets.
    max_check_lapses: int = 3
    check_limits: CheckLimits = field(default_factory=CheckLimits)
    # The farm's id (shared/identity.py): its broker marker's name, and the owner it claims the broker for.
    farm_id: str = ""
    # A queued job sent longer ago than this whose message is nowhere in the broker lost it.
    lost_after_s: float = 130.0

    @classmethod
    def from_settings(
        cls, settings: Settings, sessions: sessionmaker[Session], celery: Celery, farm_id: str = ""
    ) -> Reconciler:
        return cls(
            sessions,
            celery,
            max_attempts=settings.max_attempts,
            stale_unacked_s=stale_unacked_s(settings),
            farm_id=farm_id,
            lost_after_s=stale_unacked_s(settings),
            webhook_quiet_s=settings.webhook_retry_backoff_max_s + 60.0,
            batch_window_per_worker=settings.batch_window_per_worker,
            worker_live_s=settings.worker_live_s,
            check_lease_s=settings.job_lease_s,
            max_check_lapses=settings.max_check_lapses,
            check_limits=CheckLimits.from_settings(settings),
        )

    # A webhook with no delivery attempt for this long lost its message (the longest retry wait, plus a margin).
    webhook_quiet_s: float = 660.0
    _webhooks_sent: dict[str, float] = field(default_factory=dict, init=False)
    _walk: tuple[datetime, str] | None = field(default=None, init=False)
    _walking: bool = field(default=False, init=False)

    def run_once(self) -> Report:
        report = Report()
        with transaction(self.sessions) as session:
            requeued, quarantined = jobs.recover_expired(session, self.max_attempts, PAGE)
        self._send(requeued)
        report.recovered_expired, report.quarantined = len(requeued), len(quarantined)
        for job_id in quarantined:
            self._notify(job_id)

        with self.sessions() as session:
            unsent = jobs.unsent(session, self.grace_s, PAGE)
        self._send([job.id for job in unsent], jobs_=unsent)
        report.sent_unsent = len(unsent)
        report.resent_stale_unacked = self._resend_stale_unacked()
        report.resent_after_broker_loss = self._resend_after_broker_loss()
        report.resent_lost = self._resend_lost()
        report.webhooks_sent = self._send_missed_webhooks()
        with self.sessions() as session:
            waiting = jobs.any_waiting_check_lapsed(session)
        queue_empty = waiting and self._qa_queue_empty()  # the broker is asked only when it matters
        with transaction(self.sessions) as session:
            ended = jobs.end_lapsed_checks(session, self.max_check_lapses, PAGE)
            lapsed = jobs.lapsed_checks(session, self.check_lease_s, PAGE, queue_empty=queue_empty)
            durations = jobs.take_durations(session, lapsed)
        for job_id in ended:
            log.warning("job %s: its check lapsed %d times; it ends needs_review", job_id, self.max_check_lapses)
            self._notify(job_id)
        for job_id in lapsed:
            enqueue_check(self.celery, job_id, self.check_limits.for_take(durations.get(job_id, 0.0)))
        report.checks_resent = len(lapsed)
        report.checks_lapsed = len(ended)
        report.batch_lines_sent = scheduler.top_up(
            self.sessions, self.celery, self.batch_window_per_worker, self.worker_live_s
        )
        if report.any():
            log.info("reconciled: %s", report)
        return report

    def _send(self, job_ids: list[str], jobs_: list[Job] | None = None) -> None:
        if not job_ids:
            return
        if jobs_ is None:
            with self.sessions() as session:
                jobs_ = jobs.queued_among(session, job_ids)
        for job in jobs_:
            priority = job.priority
            if job.batch_id is None or job.priority > BATCH_PRIORITY:  # interactive: at its fair priority
                priority = send_priority(self.sessions, job.id, job.priority)
            enqueue_job(self.celery, job.id, job.kind, job.engine, priority, len(job.text))
            with transaction(self.sessions) as session:
                jobs.mark_sent(session, job.id)

    def _notify(self, job_id: str) -> None:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            wanted = job is not None and job.webhook_url
            batch_id = job.batch_id if job is not None else None
            batch_owed = batch_id is not None and deliveries.batch_owed(session, batch_id)
        if wanted:
            enqueue_webhook(self.celery, job_id)
        if batch_owed and batch_id is not None:  # the quarantined line was its batch's last open one
            enqueue_batch_webhook(self.celery, batch_id)

    def _redis(self) -> Any:
        return self.celery.connection_for_write()

    def _qa_queue_empty(self) -> bool:
        """Whether the QA queue holds no message (kombu keeps one Redis list per priority step); an unreachable
        broker counts as not empty, so that nothing is re-sent blind."""
        try:
            with self._redis() as conn:
                pipe = conn.default_channel.client.pipeline(transaction=False)
                for key in queue_keys(QA_QUEUE):
                    pipe.llen(key)
                return not any(pipe.execute())
        except Exception:
            log.warning("could not read the QA queue's depth", exc_info=True)
            return False

    def _resend_stale_unacked(self) -> int:
        # kombu scores the unacked index with the taking worker's time.time(), so this cutoff compares two hosts'
        # clocks. It decides only a re-send, never who runs the job: the message's job is re-sent only while it is
        # still queued, and a duplicate message finds the job claimed, by the database's clock (shared/jobs/state.py).
        cutoff = time.time() - self.stale_unacked_s
        with self._redis() as conn:
            client = conn.default_channel.client
            # Bounded by the fleet: each worker holds one started message plus its short-countdown retries.
            tags = client.zrangebyscore(UNACKED_INDEX, "-inf", cutoff, start=0, num=PAGE)
            if not tags:
                return 0
            by_job = {}
            for tag, raw in zip(tags, client.hmget(UNACKED, tags), strict=True):
                job_id = _job_id(raw)
                if job_id is not None:
                    by_job[job_id] = tag
            with self.sessions() as session:
                queued = jobs.queued_among(session, list(by_job))
            self._send([job.id for job in queued], jobs_=queued)
            dead = [by_job[job.id] for job in queued]
            if dead:
                # Their holder is gone; dropping them spares a pointless redelivery hours later.
                client.hdel(UNACKED, *dead)
                client.zrem(UNACKED_INDEX, *dead)
        return len(queued)

    def _resend_after_broker_loss(self) -> int:
        with self._redis() as conn:
            client = conn.default_channel.client
            self._claim_broker(client)
            if not self._walking:
                if client.exists(epoch_key(self.farm_id)):
                    return 0
                log.warning("the broker holds no marker: it lost its data; re-sending every queued job")
                self._walking, self._walk = True, None
            with self.sessions() as session:
                page = jobs.queued_page(session, self._walk, PAGE)
            self._send([job.id for job in page], jobs_=page)
            if len(page) < PAGE:
                client.set(epoch_key(self.farm_id), utcnow().isoformat())  # a marker: its value is only shown
                self._walking = False
            else:
                self._walk = (page[-1].created_at, page[-1].id)
        return len(page)

    def _claim_broker(self, client: Any) -> None:
        """Claim the broker again (a Redis that lost its data lost the claim too); another farm's claim is logged
        on every pass: its workers take this farm's jobs, and those jobs are re-sent as lost."""
        if not self.farm_id:
            return
        owner = identity.claim_broker(client, self.farm_id)
        if owner != self.farm_id:
            log.error("%s", identity.broker_conflict(self.celery.conf.broker_url or "", owner, self.farm_id))

    def _resend_lost(self) -> int:
        """Queued jobs sent over `lost_after_s` ago whose message is in no list of their engine's queue and not in
        the unacked set: the broker lost it, or another farm's worker took it. Re-sent; a message the check missed
        (taken by a worker between the reads) only makes a harmless duplicate."""
        with self.sessions() as session:
            sent_before = db_now(session) - timedelta(seconds=self.lost_after_s)  # sent_at is the database's clock
            waiting = jobs.sent_before(session, sent_before, PAGE)
        if not waiting:
            return 0
        held = self._job_ids_in_broker({job.engine for job in waiting})
        lost = [job.id for job in waiting if job.engine in held and job.id not in held[job.engine]]
        if not lost:
            return 0
        with self.sessions() as session:
            still = [job for job in jobs.queued_among(session, lost) if job.sent_at and job.sent_at < sent_before]
        if still:
            log.warning("%d queued job(s) sent over %.0f s ago are in no broker queue; sending them again",
                        len(still), self.lost_after_s)  # fmt: skip
        self._send([job.id for job in still], jobs_=still)
        return len(still)

    def _job_ids_in_broker(self, engines: set[str]) -> dict[str, set[str]]:
        """Per engine, the job ids of the messages in its queue or in the unacked set; an engine whose queue (or
        the unacked set) holds more than LOST_SCAN messages is left out: its jobs cannot be told lost this pass."""
        names = sorted(engines)
        with self._redis() as conn:
            client = conn.default_channel.client
            pipe = client.pipeline(transaction=False)
            for name in names:
                for key in queue_keys(engine_queue(name)):
                    pipe.llen(key)
            pipe.hlen(UNACKED)
            lengths = pipe.execute()
            if lengths[-1] > LOST_SCAN:
                return {}
            per_engine = len(queue_keys(""))
            depths = [sum(lengths[i * per_engine : (i + 1) * per_engine]) for i in range(len(names))]
            readable = [name for name, depth in zip(names, depths, strict=True) if depth <= LOST_SCAN]
            if not readable:
                return {}
            pipe = client.pipeline(transaction=False)
            for name in readable:
                for key in queue_keys(engine_queue(name)):
                    pipe.lrange(key, 0, LOST_SCAN)
            pipe.hvals(UNACKED)
            found = pipe.execute()
        unacked = {job_id for raw in found[-1] if (job_id := _job_id(raw)) is not None}
        held: dict[str, set[str]] = {}
        for i, name in enumerate(readable):
            lists = found[i * per_engine : (i + 1) * per_engine]
            held[name] = unacked | {job_id for items in lists for raw in items if (job_id := _queued_job_id(raw))}
        return held

    def _send_missed_webhooks(self) -> int:
        """Terminal jobs whose webhook is still owed and saw no delivery attempt for a while: their message was
        lost (a webhook worker died, Redis dropped it). Each is re-sent at most once per quiet period, so webhook
        workers that are down for long do not pile up copies; the attempt cap lives in the database."""
        now = time.monotonic()
        self._webhooks_sent = {k: t for k, t in self._webhooks_sent.items() if now - t < self.webhook_quiet_s}
        with self.sessions() as session:
            clock = db_now(session)  # finished_at and started_at were written by the database's clock
            finished_before = clock - timedelta(seconds=self.grace_s * 2)
            quiet_since = clock - timedelta(seconds=self.webhook_quiet_s)
            owed_jobs = deliveries.undelivered(
                session, Job, finished_before=finished_before, quiet_since=quiet_since, limit=PAGE
            )
            owed_batches = deliveries.undelivered(
                session, Batch, finished_before=finished_before, quiet_since=quiet_since, limit=PAGE
            )
        sent = 0
        sends: list[tuple[str, str, Callable[[Celery, str], None]]]
        sends = [(job_id, job_id, enqueue_webhook) for job_id in owed_jobs]
        sends += [(f"batch:{batch_id}", batch_id, enqueue_batch_webhook) for batch_id in owed_batches]
        for key, subject_id, send in sends:
            if key not in self._webhooks_sent:
                send(self.celery, subject_id)
                self._webhooks_sent[key] = now
                sent += 1
        return sent


def _job_id(raw: bytes | None) -> str | None:
    """The job id of a message kombu stored as [payload, exchange, routing_key]; None for other messages."""
    if raw is None:
        return None
    try:
        return _task_job_id(json.loads(raw)[0])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def _queued_job_id(raw: bytes) -> str | None:
    """The job id of a message waiting in a queue's list (the payload itself); None for other messages."""
    try:
        return _task_job_id(json.loads(raw))
    except (ValueError, TypeError):
        return None


def _task_job_id(payload: Any) -> str | None:
    try:
        headers = payload["headers"]
        if headers.get("task") not in TASKS.values():
            return None
        job_id = headers.get("argsrepr", "").strip("[]() ,").strip("'\"")
        return job_id if jobs.is_job_id(job_id) else None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return None
