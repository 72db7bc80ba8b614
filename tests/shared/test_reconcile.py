"""The reconciler against real PostgreSQL and Redis: unsent jobs, dead workers, stale unacked messages, messages the
broker lost (or another farm's worker took), a broker that lost its data (one marker per farm), quarantine, and a
bounded amount of Redis work per pass."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import redis
from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.config import Settings
from shared.db import transaction
from shared.identity import OWNER_KEY
from shared.jobs import state as jobs
from shared.models import Job, utcnow
from shared.queue import QA_QUEUE, SYNTHESIZE_TASK, engine_queue, enqueue_check, enqueue_job, make_celery
from shared.reconcile import EPOCH_KEY, UNACKED, UNACKED_INDEX, Reconciler, epoch_key


@pytest.fixture
def celery(farm_settings: Settings) -> Celery:
    return make_celery(farm_settings)


@pytest.fixture
def client(farm_settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(farm_settings.broker_url)


@pytest.fixture
def reconciler(sessions: sessionmaker[Session], celery: Celery, client: redis.Redis) -> Reconciler:
    client.set(EPOCH_KEY, "test")  # the broker has not lost its data unless a test says so
    return Reconciler(sessions, celery, max_attempts=3, stale_unacked_s=30)


def make_job(sessions: sessionmaker[Session], age_s: float = 120, sent: bool = False) -> str:
    with transaction(sessions) as session:
        tenant = tenants.get_or_create_tenant(session, "acme")
        job, _ = jobs.create_job(
            session, tenant_id=tenant.id, idempotency_key=None, engine="kokoro", text="hi", voice="jf_alpha",
            mode="clone", language="en", format="wav", created_at=utcnow() - timedelta(seconds=age_s),
            sent_at=utcnow() if sent else None,
        )  # fmt: skip
        return job.id


def row(sessions: sessionmaker[Session], job_id: str) -> Job:
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def queue_keys(client: redis.Redis) -> list[bytes]:
    # kombu keeps one list per priority step: "engine.kokoro", then the name with a separator and the step.
    return sorted(client.scan_iter(match=engine_queue("kokoro") + "*"))


def queued_ids(client: redis.Redis) -> list[str]:
    ids = []
    for key in queue_keys(client):
        for raw in client.lrange(key, 0, -1):  # type: ignore[union-attr]
            ids.append(json.loads(json.loads(raw)["headers"]["argsrepr"].replace("'", '"'))[0])
    return ids


def test_sends_only_jobs_whose_send_never_reached_the_broker(
    sessions: sessionmaker[Session], reconciler: Reconciler, client: redis.Redis
) -> None:
    held, lost, fresh = make_job(sessions, sent=True), make_job(sessions), make_job(sessions, age_s=0)
    report = reconciler.run_once()
    # `fresh` may still be between its commit and its own send: the grace period leaves it alone.
    assert report.sent_unsent == 1 and queued_ids(client) == [lost]
    assert row(sessions, lost).sent_at is not None
    assert reconciler.run_once().sent_unsent == 0
    assert held not in queued_ids(client) and fresh not in queued_ids(client)


def test_recovers_lapsed_leases_and_quarantines_repeat_offenders(
    sessions: sessionmaker[Session], reconciler: Reconciler, client: redis.Redis
) -> None:
    dead, offender, alive = make_job(sessions, sent=True), make_job(sessions, sent=True), make_job(sessions, sent=True)
    with transaction(sessions) as session:
        for job_id in (dead, offender, alive):
            jobs.claim(session, job_id, "w", 60, 3)
        session.execute(update(Job).where(Job.id == offender).values(lost_attempts=2))
        session.execute(
            update(Job).where(Job.id.in_([dead, offender])).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    report = reconciler.run_once()
    assert (report.recovered_expired, report.quarantined) == (1, 1)
    assert row(sessions, dead).status == "queued" and queued_ids(client) == [dead]
    quarantined = row(sessions, offender)
    assert quarantined.status == "failed" and quarantined.error_code == "quarantined"
    assert row(sessions, alive).status == "running"


def _take_like_a_worker(client: redis.Redis, age_s: float) -> bytes:
    """Move the first queued message into kombu's unacked set, delivered `age_s` ago, as a worker's prefetch
    does; then the worker is gone."""
    raw = client.rpop(queue_keys(client)[0])
    assert raw is not None
    tag = b"tag-" + str(time.time()).encode()
    client.hset(UNACKED, tag, json.dumps([json.loads(raw), "", engine_queue("kokoro")]))
    client.zadd(UNACKED_INDEX, {tag: time.time() - age_s})
    return tag


def test_a_dead_workers_untouched_message_is_resent_after_about_a_lease(
    sessions: sessionmaker[Session], reconciler: Reconciler, celery: Celery, client: redis.Redis
) -> None:
    stuck, recent, running = make_job(sessions, sent=True), make_job(sessions, sent=True), make_job(sessions, sent=True)
    for job_id in (stuck, recent, running):
        enqueue_job(celery, job_id, "synthesize", "kokoro", 5)
    old_tag = _take_like_a_worker(client, age_s=60)  # `stuck`: taken a minute ago, never claimed
    _take_like_a_worker(client, age_s=1)  # `recent`: a live worker may be about to claim it
    stale_running = _take_like_a_worker(client, age_s=60)  # `running`: its worker holds the job's lease
    with transaction(sessions) as session:
        jobs.claim(session, running, "w", 60, 3)
    report = reconciler.run_once()
    assert report.resent_stale_unacked == 1
    assert queued_ids(client) == [stuck]
    assert not client.hexists(UNACKED, old_tag) and client.zscore(UNACKED_INDEX, old_tag) is None
    assert client.hexists(UNACKED, stale_running)  # never touched: its job is running
    assert reconciler.run_once().resent_stale_unacked == 0  # and sent once only


def test_a_broker_that_lost_its_data_gets_the_whole_backlog_again_page_by_page(
    sessions: sessionmaker[Session], reconciler: Reconciler, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shared.reconcile

    monkeypatch.setattr(shared.reconcile, "PAGE", 4)
    backlog = [make_job(sessions, age_s=100 - i, sent=True) for i in range(10)]
    client.flushdb()  # Redis restarted without its data
    reports = [reconciler.run_once() for _ in range(4)]
    assert [r.resent_after_broker_loss for r in reports] == [4, 4, 2, 0]
    assert sorted(queued_ids(client)) == sorted(backlog)
    assert client.exists(EPOCH_KEY)


def test_redis_work_per_pass_does_not_grow_with_the_backlog(
    sessions: sessionmaker[Session], reconciler: Reconciler, celery: Celery, client: redis.Redis
) -> None:
    for _ in range(300):
        enqueue_job(celery, make_job(sessions, sent=True), "synthesize", "kokoro", 5)
    before = client.info("commandstats")
    reconciler.run_once()
    after = client.info("commandstats")
    calls = {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after}
    # No scan of the queues: a fixed handful of commands whatever the backlog.
    assert "cmdstat_lrange" not in calls or calls["cmdstat_lrange"] == 0
    assert sum(calls.values()) < 10, calls
    assert len(queued_ids(client)) == 300


def test_terminal_jobs_whose_webhook_message_was_lost_get_it_again_once(
    sessions: sessionmaker[Session], reconciler: Reconciler, client: redis.Redis
) -> None:
    job_id = make_job(sessions, sent=True)
    with transaction(sessions) as session:
        claimed = jobs.claim(session, job_id, "w", 60, 3)
        assert claimed is not None
        jobs.complete(session, claimed[1], {"key": "k"})
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(webhook_url="https://example.com/hook", finished_at=utcnow() - timedelta(seconds=60))
        )
    assert reconciler.run_once().webhooks_sent == 1
    # Not again while the copy just sent may still be on its way: no pile-up while webhook workers are down.
    assert reconciler.run_once().webhooks_sent == 0
    messages = [json.loads(m)["headers"]["task"] for m in client.lrange("webhooks", 0, -1)]  # type: ignore[union-attr]
    assert messages == ["voicefarm.webhook"]
    assert SYNTHESIZE_TASK not in messages


def test_a_waiting_check_is_resent_only_once_the_qa_queue_is_empty(
    sessions: sessionmaker[Session], reconciler: Reconciler, celery: Celery, client: redis.Redis
) -> None:
    job_id = make_job(sessions, sent=True)
    with transaction(sessions) as session:
        claimed = jobs.claim(session, job_id, "w", 60, 3)
        assert claimed is not None and jobs.to_checking(session, claimed[1], {"key": "k"}, 60)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    ahead = make_job(sessions, sent=True)
    enqueue_check(celery, ahead)  # a backlog in the QA queue, with the lapsed take presumably in it
    assert reconciler.run_once().checks_resent == 0
    for key in qa_keys(client):
        client.delete(key)  # the queue drained and the take never came: its message was lost
    assert reconciler.run_once().checks_resent == 1
    assert sum(int(client.llen(key)) for key in qa_keys(client)) == 1  # type: ignore[arg-type]
    assert reconciler.run_once().checks_resent == 0  # once per lease


def qa_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.scan_iter(match=QA_QUEUE + "*"))


def _sent_ago(sessions: sessionmaker[Session], job_id: str, seconds: float) -> None:
    with transaction(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(sent_at=utcnow() - timedelta(seconds=seconds)))


def test_a_queued_job_whose_message_is_gone_is_sent_again(
    sessions: sessionmaker[Session], reconciler: Reconciler, celery: Celery, client: redis.Redis
) -> None:
    """Sent, then the message vanished (the broker dropped it, or a worker of another farm on the same broker acked
    it as unknown): the job stayed queued with `sent_at` set, which the unsent step never looks at."""
    reconciler.lost_after_s = 60
    gone, waiting, taken, fresh = (make_job(sessions, sent=True) for _ in range(4))
    enqueue_job(celery, waiting, "synthesize", "kokoro", 5)  # still in its queue: only waiting
    enqueue_job(celery, taken, "synthesize", "kokoro", 5)
    _take_like_a_worker_by_id(client, taken)  # a worker holds it (unacked), about to claim it
    for job_id in (gone, waiting, taken):
        _sent_ago(sessions, job_id, 120)
    # `fresh` was sent a moment ago: its message may be on its way; it is left alone too.
    report = reconciler.run_once()
    assert report.resent_lost == 1 and report.sent_unsent == 0
    assert sorted(queued_ids(client)) == sorted([waiting, gone])
    assert row(sessions, gone).sent_at > utcnow() - timedelta(seconds=10)  # type: ignore[operator]
    assert fresh not in queued_ids(client)
    assert reconciler.run_once().resent_lost == 0  # its new message is there now


def _take_like_a_worker_by_id(client: redis.Redis, job_id: str) -> None:
    for key in queue_keys(client):
        for raw in client.lrange(key, 0, -1):  # type: ignore[union-attr]
            if job_id in json.loads(raw)["headers"]["argsrepr"]:
                client.lrem(key, 1, raw)
                client.hset(UNACKED, "tag-" + job_id, json.dumps([json.loads(raw), "", engine_queue("kokoro")]))
                client.zadd(UNACKED_INDEX, {"tag-" + job_id: time.time()})
                return
    raise AssertionError(f"no message for {job_id}")


def test_a_long_queue_is_not_read_for_lost_messages(
    sessions: sessionmaker[Session],
    reconciler: Reconciler,
    celery: Celery,
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shared.reconcile

    monkeypatch.setattr(shared.reconcile, "LOST_SCAN", 5)
    reconciler.lost_after_s = 60
    backlog = [make_job(sessions, sent=True) for _ in range(8)]
    for job_id in backlog:
        enqueue_job(celery, job_id, "synthesize", "kokoro", 5)
        _sent_ago(sessions, job_id, 120)
    _sent_ago(sessions, gone := make_job(sessions, sent=True), 120)
    before = client.info("commandstats")
    assert reconciler.run_once().resent_lost == 0  # the queue is too long to tell: nothing is read or re-sent
    after = client.info("commandstats")
    assert after.get("cmdstat_lrange", {"calls": 0})["calls"] == before.get("cmdstat_lrange", {"calls": 0})["calls"]
    for key in queue_keys(client):
        client.delete(key)  # the backlog drained (workers took it): now the lost one is found
    for job_id in backlog:
        with transaction(sessions) as session:
            jobs.claim(session, job_id, "w", 60, 3)
    assert reconciler.run_once().resent_lost == 1 and queued_ids(client) == [gone]


def test_each_farm_sees_a_broker_data_loss_for_itself(
    sessions: sessionmaker[Session], celery: Celery, client: redis.Redis
) -> None:
    """Two farms' reconcilers on one broker (a mistake the claims refuse, but the markers must not hide a data
    loss from either): each keeps its own marker, so the first to walk its backlog does not silence the other."""
    mine = Reconciler(sessions, celery, max_attempts=3, stale_unacked_s=30, farm_id="farm-a")
    other = Reconciler(sessions, celery, max_attempts=3, stale_unacked_s=30, farm_id="farm-b")
    mine.run_once()
    assert client.get(OWNER_KEY) == b"farm-a" and client.exists(epoch_key("farm-a"))
    assert not client.exists(epoch_key("farm-b")) and epoch_key("farm-a") != EPOCH_KEY
    client.set(epoch_key("farm-b"), "walked")
    backlog = make_job(sessions, sent=True)
    client.flushdb()  # Redis lost its data
    assert mine.run_once().resent_after_broker_loss == 1  # farm-a walks its backlog and sets its marker again
    assert other.run_once().resent_after_broker_loss == 1  # farm-b still sees the loss
    assert client.get(OWNER_KEY) == b"farm-a"  # the claim was made again, by the first farm to pass
    assert queued_ids(client) == [backlog, backlog]
