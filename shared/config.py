"""One typed settings object, read from the environment.

Defaults give the embedded single-machine mode (`./run.sh`): an embedded PostgreSQL (or SQLite) under the data
dir, a local Redis and a local SeaweedFS S3. Production points `DATABASE_URL`, `BROKER_URL` and `S3_ENDPOINT_URL`
at real services.
Nothing reads settings at import time; call `Settings()` (or `load_settings()`) where they are needed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_PREFIX = "VOICEFARM_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=_PREFIX, extra="ignore", populate_by_name=True)

    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 7860
    api_workers: int = 2

    database_url: str = Field(default="", validation_alias=AliasChoices("DATABASE_URL", "VOICEFARM_DATABASE_URL"))
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("BROKER_URL", "VOICEFARM_BROKER_URL")
    )

    s3_endpoint_url: str = Field(
        default="http://127.0.0.1:8333",
        validation_alias=AliasChoices("S3_ENDPOINT_URL", "VOICEFARM_S3_ENDPOINT_URL"),
    )
    s3_bucket: str = "voicefarm"
    s3_region: str = Field(default="us-east-1", validation_alias=AliasChoices("AWS_REGION", "VOICEFARM_S3_REGION"))
    s3_access_key: str = Field(
        default="voicefarm", validation_alias=AliasChoices("AWS_ACCESS_KEY_ID", "VOICEFARM_S3_ACCESS_KEY")
    )
    s3_secret_key: str = Field(
        default="voicefarm-secret",
        validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY", "VOICEFARM_S3_SECRET_KEY"),
    )
    # Presigned URLs name this endpoint when clients reach S3 by another address than the farm does.
    s3_public_endpoint_url: str = ""
    presign_expiry_s: int = 3600

    # "json": one JSON object per log line, with job, batch and tenant ids (shared/logs.py); "text": plain lines.
    log_format: str = "json"

    engine: str = "kokoro"
    # Intra-op threads for CPU inference; 0 means every core.
    engine_threads: int = 0
    # Synthesis and QA worker processes run at this niceness, below the API on a shared machine (worker/niceness.py):
    # at 19 the engines take only the CPU the API and the services leave, and lose none while nobody submits.
    worker_nice: int = 19
    # The cosyvoice engine: a CosyVoice2/3 model dir supplied by the operator (read-only to the farm).
    cosyvoice_model_dir: Path = Path("models/Fun-CosyVoice3-0.5B")
    cosyvoice_load_trt: bool = False
    cosyvoice_load_vllm: bool = False
    cosyvoice_fp16: bool = False
    # Set per process by `voicefarm worker`; names the worker in job rows and GET /v1/workers.
    worker_name: str = ""
    device: str = "cpu"
    # Limits checked at the API boundary.
    max_text_chars: int = 5000
    max_upload_bytes: int = 20 * 1024 * 1024
    # Requests per minute per API key (0: unlimited) and queued jobs per tenant (0: unlimited).
    rate_limit_per_minute: int = 6000
    max_queued_per_tenant: int = 10000
    # Batches (POST /v1/batches): lines per batch, body or upload size, and queued batch lines per tenant.
    max_batch_lines: int = 10000
    max_batch_bytes: int = 32 * 1024 * 1024
    max_queued_batch_lines_per_tenant: int = 50000
    # The scheduler keeps at most this many of a tenant's batch lines in the broker per live worker.
    batch_window_per_worker: int = 2
    # A worker whose heartbeat is older than this is not counted as live by the scheduler.
    worker_live_s: float = 60.0
    # Answer a job identical in everything that shapes its audio from a stored result (shared/jobs/dedup.py).
    dedup_cache: bool = True
    # Origins allowed to call the API from a browser; none by default.
    cors_origins: list[str] = []
    # Webhooks may target loopback and private networks only when this is set (tests, a trusted LAN).
    # The farm's own database, broker, storage and API ports stay forbidden either way.
    webhook_allow_private: bool = False
    # Webhooks run on their own queue (`voicefarm webhook-worker`); each event gets at most this many attempts,
    # retried with Celery's exponential backoff and full jitter, capped.
    webhook_max_attempts: int = 8
    webhook_connect_timeout_s: float = 5.0
    webhook_timeout_s: float = 10.0
    webhook_retry_backoff_s: int = 5
    webhook_retry_backoff_max_s: int = 600
    webhook_concurrency: int = 2
    # Extra CA certificates (PEM) trusted for https receivers, besides the system's.
    webhook_ca_file: Path | None = None
    # Never a webhook target on loopback, private or the farm's own addresses: SeaweedFS's default listeners
    # (master, volume, filer, S3, admin, their gRPC ports, WebDAV, Iceberg, Lance, debug), Redis and PostgreSQL.
    # The configured database, broker, storage and API ports, and the embedded SeaweedFS's ports, are added.
    webhook_blocked_ports: list[int] = [
        5432, 6060, 6379, 7333, 8080, 8181, 8333, 8888, 9101, 9333, 9340,
        18080, 18333, 18888, 19333, 19340, 23646, 33646,
    ]  # fmt: skip
    # Worker behaviour. Transient failures (a dependency down) retry with Celery's exponential backoff and jitter,
    # capped at retry_backoff_max_s between tries; task_max_retries of them span well over an hour of outage.
    task_max_retries: int = 200
    retry_backoff_max_s: int = 60
    # Redis hands an unacked message to another worker after this long; 0 derives it from the longest hard time
    # limit a job can get, so a live job's message is never redelivered (the reconciler re-sends a dead worker's
    # message after about one lease instead). Tests shorten it to show that fencing holds even then.
    broker_visibility_timeout_s: int = 0
    # Encoded audio a worker keeps while storage or the database is down, so only the upload is retried.
    finish_spool_bytes: int = 256 * 1024 * 1024
    # Test-only: kill the worker process at these points of a job (a comma list of after_claim, after_upload,
    # before_complete, before_ack), each once per data dir (a marker file there remembers).
    test_crash_at: str = ""
    # Test-only: damage takes for the QA gate to catch (worker/takes.defect_for), e.g. "truncate@1".
    test_take_defect: str = ""
    # Test-only: the finisher's thread waits this long before each upload, so a test can stop a worker while it
    # holds a finish (worker/finisher.py).
    test_finish_delay_s: float = 0.0
    # QA workers (`voicefarm qa-worker`): processes, each with its own Whisper and speaker encoder.
    qa_concurrency: int = 1
    # A running job's lease is renewed by its worker's heartbeat; when it lapses the worker is presumed dead.
    job_lease_s: int = 60
    # A job that was started this many times without finishing is quarantined instead of retried.
    max_attempts: int = 3
    reconcile_interval_s: float = 15.0
    # The one-machine farm (`voicefarm up`): its CPU worker processes, and how long a stop may take: every
    # process is gone stop_timeout_s after SIGTERM, each layer inside getting a little less (see stop_budget).
    cpu_workers: int = 1
    stop_timeout_s: float = 30.0

    def stop_budget(self, depth: int) -> float:
        """Seconds a process `depth` layers below `voicefarm up` has to stop: `up` itself (0); what it runs (1:
        `voicefarm worker`, gunicorn's master); below that (2: a Celery worker, gunicorn's graceful timeout); a
        Celery worker's soft shutdown (3). Each layer is done before the one around it gives up and kills it."""
        return max(1.0, self.stop_timeout_s - _STOP_MARGIN_S * depth)

    def resolved_database_url(self) -> str:
        """DATABASE_URL; without one, the embedded PostgreSQL under the data dir once `voicefarm up` created it,
        else SQLite under the data dir."""
        if self.database_url:
            url = self.database_url
            # Plain postgresql:// URLs mean psycopg 3 here, not psycopg2.
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        if (self.data_dir / "postgres" / "PG_VERSION").exists():
            return embedded_postgres_url(self.data_dir)
        return f"sqlite:///{(self.data_dir / 'voicefarm.db').resolve()}"


_STOP_MARGIN_S = 4.0


def embedded_postgres_socket_dir(data_dir: Path) -> Path:
    """Where the embedded PostgreSQL of a data dir listens (a Unix socket, no TCP port): its own dir, or a short
    dir in the temp dir named after it when that path is too long for a socket name (107 bytes)."""
    pgdata = (data_dir / "postgres").resolve()
    if len(str(pgdata / ".s.PGSQL.5432")) <= 100:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"voicefarm-pg-{digest}"


def embedded_postgres_url(data_dir: Path) -> str:
    """The database of the embedded PostgreSQL of a data dir, so any command finds the one `voicefarm up` runs."""
    return f"postgresql+psycopg://postgres@/voicefarm?host={quote(str(embedded_postgres_socket_dir(data_dir)))}"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, warning on misspelled `VOICEFARM_*` variables."""
    known = {name.upper() for name in Settings.model_fields}
    for key in os.environ:
        if key.startswith(_PREFIX) and key[len(_PREFIX) :] not in known:
            warnings.warn(f"unknown setting {key} is ignored", stacklevel=2)
    return Settings(**overrides)  # type: ignore[arg-type]
