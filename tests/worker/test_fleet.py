"""One API for a mixed fleet: workers publish what they serve, the API routes each job to an engine with live
workers. A kokoro farm (the default engine) and a cosyvoice worker running the FAKE upstream
(tests/support/fakes/cosyvoice: no torch, no weights) share one API, one database, one broker and one S3 bucket."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import redis
import soundfile as sf
from cryptography.fernet import Fernet
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db import transaction
from shared.engines import Capabilities, catalogue
from shared.models import Job, Worker
from shared.queue import engine_queue
from shared.storage import Storage
from tests.support.fixtures import auth
from tests.worker.test_cosyvoice_engine import FAKES, _forget_upstream, make_engine
from worker.cloning import run_clone
from worker.context import WorkerContext
from worker.synthesis import run_synthesis

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class StandIn:
    """A worker's engine as far as registering goes: what it serves, no model (the kokoro side of the fleet)."""

    capabilities: Capabilities
    model_name: str = "kokoro-82m-int8"


@pytest.fixture
def cosy_ctx(farm_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[WorkerContext]:
    """A registered cosyvoice worker whose engine drives the fake upstream."""
    _forget_upstream()
    sys.path.insert(0, str(FAKES))
    try:
        settings = farm_settings.model_copy(update={"engine": "cosyvoice", "worker_name": "cosyvoice-gpu0@test"})
        engine = make_engine(tmp_path, version=3)
        engine.load()
        ctx = WorkerContext(
            settings=settings,
            engine=engine,
            storage=Storage.from_settings(settings),
            sessions=sessions,
            name=settings.worker_name,
        )
        ctx.register()
        yield ctx
    finally:
        sys.path.remove(str(FAKES))
        _forget_upstream()


def register_kokoro(farm_settings: Settings, sessions: sessionmaker[Session]) -> None:
    settings = farm_settings.model_copy(update={"worker_name": "kokoro-cpu0@test"})
    ctx = WorkerContext(
        settings=settings,
        engine=StandIn(catalogue("kokoro").capabilities),  # type: ignore[arg-type]
        storage=Storage.from_settings(settings),
        sessions=sessions,
        name=settings.worker_name,
    )
    ctx.register()


def queued(broker_url: str, engine: str) -> int:
    """Messages waiting in an engine's queue (kombu keeps one Redis list per priority step)."""
    client = redis.Redis.from_url(broker_url)
    try:
        name = engine_queue(engine).encode()
        lists = [k for k in client.keys(name + b"*") if k == name or k.startswith(name + b"\x06\x16")]
        return sum(int(client.llen(k)) for k in lists)
    finally:
        client.close()


def reference_wav(seconds: float = 4.0, rate: int = 24000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)  # syllable-like loudness changes
    audio = (0.3 * envelope * (np.sin(2 * np.pi * 180 * t) + 0.3 * np.sin(2 * np.pi * 450 * t))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="WAV")
    return buf.getvalue()


def test_the_producer_never_imports_worker_code() -> None:
    code = (
        "import sys, producer.app, producer.wsgi\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'torch', 'onnxruntime'))\n"
        "assert not bad, bad\n"
    )
    # producer.wsgi builds the app from the environment: point it at a throwaway SQLite database.
    # and give it the key of its secrets at rest, which the API refuses to start without.
    env = {
        "DATABASE_URL": "sqlite:///:memory:",
        "PATH": "/usr/bin:/bin",
        "VOICEFARM_SECRET_KEY": Fernet.generate_key().decode(),
    }
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def test_workers_publish_what_they_serve(
    client: FlaskClient, api_key: str, cosy_ctx: WorkerContext, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        row = session.get(Worker, "cosyvoice-gpu0@test")
        assert row is not None and row.capabilities is not None
        published = Capabilities.from_json(row.capabilities)
    assert published.name == "cosyvoice" and published.model == "Fun-CosyVoice3-0.5B"
    assert {"zh", "en", "ko", "yue"} <= set(published.languages) and "instruct" in published.modes
    (worker,) = client.get("/v1/workers", headers=auth(api_key)).get_json()["workers"]
    assert worker["engine"] == "cosyvoice" and "yue" in worker["languages"] and worker["model"] == "Fun-CosyVoice3-0.5B"


def test_an_engine_without_live_workers_is_refused(client: FlaskClient, api_key: str) -> None:
    # Only the default engine (kokoro) is on offer while no cosyvoice worker is live.
    engines = client.get("/v1/instructions", headers=auth(api_key)).get_json()["engines"]
    assert list(engines) == ["kokoro"] and engines["kokoro"]["live"] is False
    response = client.post("/v1/jobs", json={"text": "你好。", "engine": "cosyvoice"}, headers=auth(api_key))
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "engine_unavailable"
    response = client.post("/v1/jobs", json={"text": "Hello.", "engine": "bark"}, headers=auth(api_key))
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "unknown_engine"
    # The default engine takes jobs while its workers restart: they wait in its queue.
    assert client.post("/v1/jobs", json={"text": "Hello."}, headers=auth(api_key)).status_code == 202


def test_a_stale_worker_is_not_live(
    client: FlaskClient, api_key: str, cosy_ctx: WorkerContext, sessions: sessionmaker[Session]
) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from shared.models import utcnow

    with transaction(sessions) as session:
        session.execute(update(Worker).values(last_seen=utcnow() - timedelta(seconds=3600)))
    response = client.post("/v1/jobs", json={"text": "你好。", "engine": "cosyvoice"}, headers=auth(api_key))
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "engine_unavailable"


def test_one_api_serves_kokoro_and_cosyvoice(
    client: FlaskClient,
    api_key: str,
    cosy_ctx: WorkerContext,
    farm_settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    register_kokoro(farm_settings, sessions)
    headers = auth(api_key)
    engines = client.get("/v1/instructions", headers=headers).get_json()["engines"]
    assert set(engines) == {"kokoro", "cosyvoice"} and all(e["live"] for e in engines.values())
    assert any("四川" in i["text"] for i in engines["cosyvoice"]["honoured"])
    stock = client.get("/v1/voices", headers=headers).get_json()["stock"]
    assert {v["engine"] for v in stock} == {"kokoro"} and "jf_alpha" in {v["id"] for v in stock}

    # A stock kokoro voice goes to the kokoro queue; cosyvoice has no stock voices, so naming it needs a clone.
    kokoro_job = client.post("/v1/jobs", json={"text": "Hello there.", "voice": "jf_alpha"}, headers=headers)
    assert kokoro_job.status_code == 202 and kokoro_job.get_json()["engine"] == "kokoro"
    assert queued(farm_settings.broker_url, "kokoro") == 1
    response = client.post("/v1/jobs", json={"text": "你好。", "engine": "cosyvoice"}, headers=headers)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "voice_required"
    # Languages are validated per engine: Korean is CosyVoice3's, not kokoro's.
    response = client.post("/v1/jobs", json={"text": "안녕하세요.", "language": "ko"}, headers=headers)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "unsupported_language"

    # Clone for cosyvoice; the clone job runs on the cosyvoice worker (the fake upstream).
    form = {"audio": (io.BytesIO(reference_wav()), "ref.wav"), "transcript": "希望你以后能够做的比我还好呦。"}
    created = client.post("/v1/voices", data=form | {"engine": "cosyvoice", "language": "zh"}, headers=headers)
    assert created.status_code == 202, created.get_json()
    voice = created.get_json()
    assert voice["engine"] == "cosyvoice" and queued(farm_settings.broker_url, "cosyvoice") == 1
    assert run_clone(cosy_ctx, voice["job_id"]) == "succeeded"
    assert client.get(f"/v1/voices/{voice['id']}", headers=headers).get_json()["status"] == "ready"

    # A job naming the cloned voice takes the voice's engine, in a language only that engine speaks.
    body = {"text": "안녕하세요. 반갑습니다.", "voice": voice["id"], "language": "ko", "format": "wav"}
    job = client.post("/v1/jobs", json=body, headers=headers)
    assert job.status_code == 202, job.get_json()
    assert job.get_json()["engine"] == "cosyvoice" and queued(farm_settings.broker_url, "cosyvoice") == 2
    assert run_synthesis(cosy_ctx, job.get_json()["id"]) == "succeeded"
    done = client.get(f"/v1/jobs/{job.get_json()['id']}", headers=headers).get_json()
    assert done["status"] == "succeeded" and done["result"]["engine"] == "cosyvoice"
    # Naming kokoro with a cosyvoice voice is a conflict, said plainly.
    body = {"text": "Hello.", "voice": voice["id"], "engine": "kokoro"}
    response = client.post("/v1/jobs", json=body, headers=headers)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "voice_engine_mismatch"
    with sessions() as session:
        assert session.get(Job, kokoro_job.get_json()["id"]).engine == "kokoro"  # type: ignore[union-attr]


def test_speech_streams_segment_by_segment_from_a_cosyvoice_clone(
    client: FlaskClient,
    api_key: str,
    cosy_ctx: WorkerContext,
    farm_settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    import threading
    import time

    from sqlalchemy import select

    from shared.audio.streaming import SegmentPublisher, stream_key

    class Recording(SegmentPublisher):
        """Notes which segments went to an open stream."""

        streamed: list[int] = []

        def publish(self, job_id: str, attempt: int, index: int, count: int, audio: np.ndarray, rate: int) -> None:
            if self._redis.exists(stream_key(job_id)):
                self.streamed.append(index)
            super().publish(job_id, attempt, index, count, audio, rate)

    publisher = Recording(farm_settings.broker_url)
    cosy_ctx.segments = publisher
    headers = auth(api_key)
    form = {"audio": (io.BytesIO(reference_wav()), "ref.wav"), "transcript": "希望你以后能够做的比我还好呦。"}
    voice = client.post("/v1/voices", data=form | {"engine": "cosyvoice"}, headers=headers).get_json()
    assert run_clone(cosy_ctx, voice["job_id"]) == "succeeded"

    sentence = "收到好友从远方寄来的生日礼物，那份意外的惊喜与深深的祝福让我心中充满了甜蜜的快乐，笑容如花儿般绽放。"
    body = {"model": "cosyvoice", "voice": voice["id"], "input": sentence * 5, "response_format": "wav"}
    answer: dict[str, object] = {}

    def ask() -> None:
        response = client.post("/v1/audio/speech", json=body, headers=headers)
        answer.update(response=response, data=response.data)  # read here: the stream runs in this request's context

    request = threading.Thread(target=ask)
    request.start()
    deadline = time.monotonic() + 30
    job_id = None
    while job_id is None and time.monotonic() < deadline:
        with sessions() as session:
            job_id = session.scalar(select(Job.id).where(Job.kind == "synthesize"))
        time.sleep(0.05)
    assert job_id is not None
    assert run_synthesis(cosy_ctx, job_id) == "succeeded"  # the worker's side, publishing each segment
    request.join(60)
    response, data = answer["response"], answer["data"]
    assert response.status_code == 200, data  # type: ignore[attr-defined]
    assert response.headers["X-Voicefarm-Job-Id"] == job_id  # type: ignore[attr-defined]
    streamed, rate = sf.read(io.BytesIO(data), dtype="float32")  # type: ignore[arg-type]
    done = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
    assert done["engine"] == "cosyvoice" and len(done["result"]["segments"]) >= 2
    stored, stored_rate = sf.read(io.BytesIO(client.get(f"/v1/jobs/{job_id}/audio", headers=headers).data))
    assert publisher.streamed == list(range(len(done["result"]["segments"])))
    # The stream is the stored object's audio, segment after segment with the same pauses. Not to the sample: each
    # segment is watermarked alone, and the stored take is levelled to its loudness target again after its mark.
    assert rate == stored_rate and abs(len(streamed) - len(stored)) <= 2
    assert float(np.corrcoef(streamed[: len(stored)], stored[: len(streamed)])[0, 1]) > 0.99
    # The same request again is answered at once from the dedup cache's copy of the stored object, no worker run.
    again = client.post("/v1/audio/speech", json=body, headers=headers)
    assert again.status_code == 200 and again.headers["X-Voicefarm-Job-Id"] != job_id
    cached = client.get(f"/v1/jobs/{again.headers['X-Voicefarm-Job-Id']}", headers=headers).get_json()
    assert cached["status"] == "succeeded" and cached["result"].get("cached") is True
    assert len(sf.read(io.BytesIO(again.data), dtype="float32")[0]) == len(stored)
