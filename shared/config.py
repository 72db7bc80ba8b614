"""One typed settings object, read from the environment, and the only module that reads the environment.

Defaults give the embedded single-machine mode (`./run.sh`): an embedded PostgreSQL (or SQLite) under the data
dir, a local Redis and a local SeaweedFS S3. Production points `DATABASE_URL`, `BROKER_URL` and `S3_ENDPOINT_URL`
at real services.
Nothing reads settings at import time; call `Settings()` (or `load_settings()`) where they are needed, and hand
them down: engines, contexts and commands take them as arguments. Other code that needs the environment calls
`environment()` (a copy, for a child process) or `client_settings()` (the client commands).

Settings of one part of the farm are nested groups (`settings.cosyvoice.model_dir`), each a pydantic model. Such a
setting is read from `VOICEFARM_<GROUP>__<NAME>` (e.g. `VOICEFARM_COSYVOICE__MODEL_DIR`) and from the flat name it
always had, declared as its `validation_alias` (`VOICEFARM_COSYVOICE_MODEL_DIR`); `Settings(...)` takes the flat
keyword too (`Settings(cosyvoice_model_dir=...)`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_PREFIX = "VOICEFARM_"
_NESTED = "__"


class KokoroSettings(BaseModel):
    """The kokoro engine (Kokoro-82M on onnxruntime, the embedded default)."""

    model_config = ConfigDict(populate_by_name=True)

    threads: int = Field(
        default=0,
        ge=0,
        validation_alias="VOICEFARM_ENGINE_THREADS",
        description="Intra-op threads for CPU inference; 0 means every core.",
    )
    graph: Literal["auto", "int8", "float32"] = Field(
        default="auto",
        validation_alias="VOICEFARM_KOKORO_GRAPH",
        description="The graph the engine runs: the shipped int8 one, its weights dequantised to float32 at load "
        "(cached in the cache dir), or auto: time both once per machine at the first load and keep the faster.",
    )
    cache_dir: str = Field(
        default="",
        validation_alias="VOICEFARM_KOKORO_CACHE_DIR",
        description="Where the engine keeps the float32 graph and this machine's graph choice; empty: the user's "
        "cache dir (~/.cache/voicefarm/kokoro), shared by every farm on the machine, else the data dir's cache.",
    )


class CosyVoiceSettings(BaseModel):
    """The cosyvoice engine: upstream CosyVoice2 / Fun-CosyVoice3 on a GPU."""

    model_config = ConfigDict(populate_by_name=True)

    model_dir: Path = Field(
        default=Path("models/Fun-CosyVoice3-0.5B"),
        validation_alias="VOICEFARM_COSYVOICE_MODEL_DIR",
        description="A CosyVoice2/3 model dir supplied by the operator (read-only to the farm).",
    )
    load_trt: bool = Field(
        default=False,
        validation_alias="VOICEFARM_COSYVOICE_LOAD_TRT",
        description="Run the flow decoder with TensorRT (upstream writes its plans on the first load).",
    )
    load_vllm: bool = Field(
        default=False,
        validation_alias="VOICEFARM_COSYVOICE_LOAD_VLLM",
        description="Run the LLM with vLLM (upstream exports it on the first load).",
    )
    fp16: bool = Field(
        default=False,
        validation_alias="VOICEFARM_COSYVOICE_FP16",
        description="Half-precision inference.",
    )


class TestingSettings(BaseModel):
    """Test hooks: faults the tests inject into real processes. Never set them in production."""

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(populate_by_name=True)

    crash_at: str = Field(
        default="",
        validation_alias="VOICEFARM_TEST_CRASH_AT",
        description="Kill the worker process at these points of a job (a comma list of after_claim, after_upload, "
        "before_complete, before_ack), each once per data dir (a marker file there remembers).",
    )
    take_defect: str = Field(
        default="",
        validation_alias="VOICEFARM_TEST_TAKE_DEFECT",
        description='Damage takes for the QA gate to catch (worker/takes.defect_for), e.g. "truncate@1".',
    )
    finish_delay_s: float = Field(
        default=0.0,
        validation_alias="VOICEFARM_TEST_FINISH_DELAY_S",
        description="The finisher's thread waits this long before each upload, so a test can stop a worker while it "
        "holds a finish (worker/finisher.py).",
    )
    qa_check_delay_s: float = Field(
        default=0.0,
        validation_alias="VOICEFARM_TEST_QA_CHECK_DELAY_S",
        description="A QA check waits this long (holding its take) before it checks, so a test can make it run past "
        "its time limit (worker/qa/step.py).",
    )


_GROUPS: dict[str, type[BaseModel]] = {
    "kokoro": KokoroSettings,
    "cosyvoice": CosyVoiceSettings,
    "testing": TestingSettings,
}


def _flat_names() -> dict[str, tuple[str, str]]:
    """Each nested setting's flat environment name, lower-case without the prefix (`cosyvoice_model_dir`), mapped
    to its group and field."""
    names: dict[str, tuple[str, str]] = {}
    for group, model in _GROUPS.items():
        for name, field in model.model_fields.items():
            alias = field.validation_alias
            for choice in alias.choices if isinstance(alias, AliasChoices) else [alias]:
                if isinstance(choice, str) and choice.upper().startswith(_PREFIX):
                    names[choice[len(_PREFIX) :].lower()] = (group, name)
    return names


class _FlatEnvironment(PydanticBaseSettingsSource):
    """The flat `VOICEFARM_*` names of nested settings, read from the environment into their groups."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # unused: __call__ reads all
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = {name.upper(): value for name, value in os.environ.items()}
        found: dict[str, Any] = {}
        for flat, (group, name) in _flat_names().items():
            value = environ.get(_PREFIX + flat.upper())
            if value is not None:
                found.setdefault(group, {})[name] = value
        return found


_BLOCKED_PORTS = [
    5432, 6060, 6379, 7333, 8080, 8181, 8333, 8888, 9101, 9333, 9340,
    18080, 18333, 18888, 19333, 19340, 23646, 33646,
]  # fmt: skip


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=_PREFIX, env_nested_delimiter=_NESTED, extra="ignore", populate_by_name=True
    )

    data_dir: Path = Field(default=Path("var"), description="Where the farm keeps its state on this machine.")
    host: str = Field(default="127.0.0.1", description="The address the API listens on.")
    port: int = Field(default=7860, description="The port the API listens on.")
    api_workers: int = Field(default=2, description="gunicorn worker processes of `voicefarm api`.")
    api_threads: int = Field(
        default=16,
        ge=2,
        description="gunicorn threads of each `voicefarm api` worker process (gthread): each request holds one while "
        "it is answered, a synchronous speech request until its answer ends.",
    )
    api_reserved_threads: int = Field(
        default=4,
        ge=1,
        description="Threads of each API process that synchronous speech requests never take: speech streams are "
        "capped at api_threads - api_reserved_threads per process (past it 503 server_busy), so health checks and "
        "every other request always find a thread.",
    )

    database_url: str = Field(
        default="",
        validation_alias=AliasChoices("DATABASE_URL", "VOICEFARM_DATABASE_URL"),
        description="The database; without one, the embedded PostgreSQL or SQLite under the data dir.",
    )
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("BROKER_URL", "VOICEFARM_BROKER_URL"),
        description="The Redis broker of the task queues.",
    )

    s3_endpoint_url: str = Field(
        default="http://127.0.0.1:8333",
        validation_alias=AliasChoices("S3_ENDPOINT_URL", "VOICEFARM_S3_ENDPOINT_URL"),
        description="The S3 storage the audio and voice profiles live in.",
    )
    s3_bucket: str = Field(default="voicefarm", description="The S3 bucket.")
    s3_region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("AWS_REGION", "VOICEFARM_S3_REGION"),
        description="The S3 region.",
    )
    s3_access_key: str = Field(
        default="voicefarm",
        validation_alias=AliasChoices("AWS_ACCESS_KEY_ID", "VOICEFARM_S3_ACCESS_KEY"),
        description="The S3 access key id.",
    )
    s3_secret_key: str = Field(
        default="voicefarm-secret",
        validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY", "VOICEFARM_S3_SECRET_KEY"),
        description="The S3 secret access key.",
    )
    s3_public_endpoint_url: str = Field(
        default="",
        description="Presigned URLs name this endpoint when clients reach S3 by another address than the farm does.",
    )
    presign_expiry_s: int = Field(default=3600, description="Seconds a presigned download URL stays valid.")

    log_format: str = Field(
        default="json",
        description='"json": one JSON object per log line, with job, batch and tenant ids (shared/logs.py); '
        '"text": plain lines.',
    )

    engine: str = Field(default="kokoro", description="The synthesis engine of this process: kokoro or cosyvoice.")
    kokoro: KokoroSettings = Field(default_factory=KokoroSettings, description=KokoroSettings.__doc__)
    cosyvoice: CosyVoiceSettings = Field(default_factory=CosyVoiceSettings, description=CosyVoiceSettings.__doc__)
    worker_nice: int = Field(
        default=19,
        description="Synthesis and QA worker processes run at this niceness, below the API on a shared machine "
        "(worker/niceness.py): at 19 the engines take only the CPU the API and the services leave, and lose none "
        "while nobody submits.",
    )
    worker_name: str = Field(
        default="",
        description="Set per process by `voicefarm worker`; names the worker in job rows and GET /v1/workers.",
    )
    device: str = Field(default="cpu", description="The device a worker runs its engine on (cpu, cuda:N).")
    max_text_chars: int = Field(default=5000, description="Characters of text a job may have (API boundary).")
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024, description="Bytes of a reference clip upload (API boundary)."
    )
    rate_limit_per_minute: int = Field(default=6000, description="Requests per minute per API key (0: unlimited).")
    auth_failures_per_minute: int = Field(
        default=60,
        ge=0,
        description="Failed authentications (401) per minute from one client address; past it the address's "
        "requests to /v1 and /metrics are refused (429 too_many_auth_failures) until the minute ends, before any "
        "key is looked up (0: unlimited).",
    )
    trusted_proxies: list[str] = Field(
        default=[],
        description="Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For names the client address "
        "for the per-address limits; empty: the connecting address is the client, whatever the header says.",
    )
    max_streams_per_tenant: int = Field(
        default=4,
        ge=0,
        description="Open synchronous speech requests (POST /v1/audio/speech) per tenant across every API process; "
        "past it 429 too_many_streams (0: unlimited).",
    )
    speech_start_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a synchronous speech request waits for a worker to start its job; then it answers 503 "
        "workers_busy and the job is canceled.",
    )
    max_queued_per_tenant: int = Field(default=10000, description="Queued jobs per tenant (0: unlimited).")
    max_batch_lines: int = Field(default=10000, description="Lines per batch (POST /v1/batches).")
    max_batch_bytes: int = Field(default=32 * 1024 * 1024, description="A batch's body or upload size.")
    max_queued_batch_lines_per_tenant: int = Field(default=50000, description="Queued batch lines per tenant.")
    max_voices_per_tenant: int = Field(
        default=1000,
        description="Cloned voices a tenant may hold (POST /v1/voices answers 403 voice_limit beyond; 0: unlimited).",
    )
    consent_statement_ttl_s: float = Field(
        default=900.0,
        gt=0,
        description="Seconds a consent statement (GET /v1/consent/statement) may be used for, once, after it is "
        "issued.",
    )
    consent_max_error: float = Field(
        default=0.35,
        ge=0,
        description="A consent recording says its statement when Whisper's transcript of it is within this word "
        "(en) or character (zh, ja) error rate of the statement, and all but at most one of its farm-chosen words are "
        "heard.",
    )
    consent_min_similarity: float = Field(
        default=0.905,
        ge=-1,
        le=1,
        description="A consent recording's speaker is the reference clip's when their GE2E speaker similarity is at "
        "least this: between the lowest same-speaker pair (0.911) and the highest different-speaker pair (0.900) "
        "measured on synthetic speakers (docs/benchmarks/consent.md).",
    )
    batch_window_per_worker: int = Field(
        default=2,
        description="The scheduler keeps at most this many of a tenant's batch lines in the broker per live worker.",
    )
    worker_live_s: float = Field(
        default=60.0,
        description="A worker whose heartbeat is older than this is not counted as live by the scheduler.",
    )
    dedup_cache: bool = Field(
        default=True,
        description="Answer a job identical in everything that shapes its audio from a stored result "
        "(shared/jobs/dedup.py).",
    )
    cors_origins: list[str] = Field(
        default=[], description="Origins allowed to call the API from a browser; none by default."
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Webhooks may target loopback and private networks only when this is set (tests, a trusted "
        "LAN). The farm's own database, broker, storage and API ports stay forbidden either way.",
    )
    webhook_max_attempts: int = Field(
        default=8,
        description="Webhooks run on their own queue (`voicefarm webhook-worker`); each event gets at most this "
        "many attempts, retried with Celery's exponential backoff and full jitter, capped.",
    )
    webhook_connect_timeout_s: float = Field(default=5.0, description="Seconds to connect to a webhook receiver.")
    webhook_resolve_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Seconds the API waits for a submitted `webhook_url`'s host to resolve (before it opens a "
        "transaction) before answering 503 `webhook_resolve_timeout`.",
    )
    webhook_timeout_s: float = Field(default=10.0, description="Seconds a webhook delivery may take in all.")
    webhook_retry_backoff_s: int = Field(default=5, description="The first webhook retry's backoff, in seconds.")
    webhook_retry_backoff_max_s: int = Field(default=600, description="The cap on a webhook retry's backoff.")
    webhook_concurrency: int = Field(default=2, description="Delivery processes of `voicefarm webhook-worker`.")
    webhook_ca_file: Path | None = Field(
        default=None, description="Extra CA certificates (PEM) trusted for https receivers, besides the system's."
    )
    webhook_blocked_ports: list[int] = Field(
        default=_BLOCKED_PORTS,
        description="Never a webhook target on loopback, private or the farm's own addresses: SeaweedFS's default "
        "listeners (master, volume, filer, S3, admin, their gRPC ports, WebDAV, Iceberg, Lance, debug), Redis and "
        "PostgreSQL. The configured database, broker, storage and API ports, and the embedded SeaweedFS's ports, "
        "are added.",
    )
    task_max_retries: int = Field(
        default=200,
        description="Transient failures (a dependency down) retry with Celery's exponential backoff and jitter, "
        "capped at retry_backoff_max_s between tries; task_max_retries of them span well over an hour of outage.",
    )
    retry_backoff_max_s: int = Field(default=60, description="The cap on a transient failure's retry backoff.")
    broker_visibility_timeout_s: int = Field(
        default=0,
        description="Redis hands an unacked message to another worker after this long; 0 derives it from the "
        "longest hard time limit a job can get, so a live job's message is never redelivered (the reconciler "
        "re-sends a dead worker's message after about one lease instead). Tests shorten it to show that fencing "
        "holds even then.",
    )
    finish_spool_bytes: int = Field(
        default=256 * 1024 * 1024,
        description="Encoded audio a worker keeps while storage or the database is down, so only the upload is "
        "retried.",
    )
    label_producer: str = Field(
        default="voicefarm",
        min_length=1,
        description="The content producer named in every stored file's implicit label (the `AIGC` tag's "
        "`ContentProducer`, GB 45438-2025): the provider's name or code.",
    )
    c2pa_cert: Path | None = Field(
        default=None,
        description="The C2PA signing certificate chain (PEM, the signing certificate first) of the manifest in wav, "
        "flac, mp3 and m4a files; unset, no manifest is written. `voicefarm up` makes a local CA and certificate "
        "under the data dir (`c2pa/`) when neither this nor `c2pa_key` is set.",
    )
    c2pa_key: Path | None = Field(
        default=None, description="The private key (PEM) of `c2pa_cert`: ECDSA P-256/384/521, Ed25519 or RSA."
    )
    watermark: bool = Field(
        default=True,
        description="Mark every take the workers make (stored, cached, streamed) with Perth's imperceptible "
        "watermark after post-production and before encoding (shared/provenance/watermark.py); `POST /v1/verify` "
        "and `voicefarm verify` find it. Off only for measurements (docs/benchmarks/watermark.md).",
    )
    testing: TestingSettings = Field(default_factory=TestingSettings, description=TestingSettings.__doc__)
    qa_concurrency: int = Field(
        default=1,
        description="QA workers (`voicefarm qa-worker`): processes, each with its own Whisper and speaker encoder.",
    )
    qa_check_time_base_s: float = Field(
        default=120.0,
        gt=0,
        description="A QA check's soft time limit is this plus qa_check_time_per_audio_s per second of the take "
        "(hard limit 30 s later), set per check when it is sent (shared/queue.py CheckLimits).",
    )
    qa_check_time_per_audio_s: float = Field(
        default=4.0,
        ge=0,
        description="Seconds of a QA check's time limit per second of the take it checks.",
    )
    max_check_lapses: int = Field(
        default=3,
        ge=1,
        description="A take whose QA check lost its lease this many times (its QA worker died, froze or ran past "
        "its time limit) is not checked again: the job ends needs_review (reason check_lapsed).",
    )
    job_lease_s: int = Field(
        default=60,
        description="A running job's lease is renewed by its worker's heartbeat; when it lapses the worker is "
        "presumed dead.",
    )
    max_attempts: int = Field(
        default=3,
        description="A job that was started this many times without finishing is quarantined instead of retried.",
    )
    reconcile_interval_s: float = Field(default=15.0, description="Seconds between the reconciler's passes.")
    cpu_workers: int = Field(default=1, description="The one-machine farm (`voicefarm up`): its CPU worker processes.")
    listen: str = Field(
        default="",
        description="An address of this host on which `voicefarm up` also opens the API and the embedded PostgreSQL, "
        "Redis and SeaweedFS S3, each with authentication on (passwords and keys generated into the data dir's "
        "`listen.json`, mode 0600), so that workers on other hosts join with `voicefarm worker --join` "
        "(docs/operations/multi-host.md). Empty: loopback (and PostgreSQL's Unix socket) only.",
    )
    join_token: str = Field(
        default="",
        description="The join token of `voicefarm worker --join URL` when `--token` is not given (an environment "
        "file keeps it off the command line, where any user of the host could read it).",
    )
    postgres_port: int = Field(
        default=5432, description="The TCP port of the embedded PostgreSQL on the `listen` address."
    )
    farm_id: str = Field(
        default="",
        description="This farm's identity, claimed on its broker (the Redis key `voicefarm:owner`) and its bucket "
        "(the object `.voicefarm-owner`) so that two farms never share them by accident (shared/identity.py). Empty: "
        "the `farm_id` file in the data dir (written by `voicefarm up`), else the one stored in the database "
        "(made by `voicefarm migrate`).",
    )
    secret_key: str = Field(
        default="",
        description="Fernet keys (comma-separated; the first encrypts, every one decrypts) that encrypt the webhook "
        "signing secrets stored in the database (shared/secrets.py). Empty: the `secret_key` file in the data dir, "
        "which `voicefarm up` makes; `voicefarm api` refuses to start with neither.",
    )
    metrics_token: str = Field(
        default="",
        description="A bearer token that may read GET /metrics besides operator keys (for Prometheus); empty: "
        "operator keys only.",
    )
    metrics_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="Seconds each API process reuses the figures of GET /metrics and the checks of GET /readyz "
        "(0: computed on every request).",
    )
    stop_timeout_s: float = Field(
        default=30.0,
        description="How long a stop of `voicefarm up` may take: every process is gone stop_timeout_s after "
        "SIGTERM, each layer inside getting a little less (see stop_budget).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Nested names (VOICEFARM_COSYVOICE__MODEL_DIR) win over the flat ones (VOICEFARM_COSYVOICE_MODEL_DIR).
        return init_settings, env_settings, _FlatEnvironment(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, data: Any) -> Any:
        """`Settings(cosyvoice_model_dir=...)`: a flat keyword sets its nested field, over any other source."""
        if not isinstance(data, dict):
            return data
        flat = _flat_names()
        data = dict(data)
        for key in [key for key in data if key.lower() in flat]:
            group, name = flat[key.lower()]
            current = data.get(group)
            nested = current.model_dump() if isinstance(current, BaseModel) else dict(current or {})
            nested[name] = data.pop(key)
            data[group] = nested
        return data

    @model_validator(mode="after")
    def _moved_services(self) -> Settings:
        """A broker or S3 endpoint that `voicefarm up` moved to a port of its own (another farm held the one the
        settings name, voicefarm/ops/farm.py) is recorded in the data dir: every command on that data dir whose
        settings name the old URL (the default, or the same setting as the farm's) gets the new one, as it finds
        the embedded PostgreSQL there."""
        for name, (moved_from, moved_to) in recorded_endpoints(self.data_dir).items():
            if getattr(self, name, None) == moved_from:
                setattr(self, name, moved_to)
        return self

    @model_validator(mode="after")
    def _listen_credentials(self) -> Settings:
        """A farm that listens on a network address (`listen`) runs its embedded Redis and S3 with the password and
        keys kept in the data dir's `listen.json` (voicefarm/ops/listen.py): every command on that data dir whose
        settings name the embedded defaults gets them, as it finds the embedded PostgreSQL there."""
        found = listen_credentials(self.data_dir)
        if found:
            apply_listen_credentials(self, found)
        return self

    @model_validator(mode="after")
    def _threads_left_for_the_api(self) -> Settings:
        if self.api_reserved_threads >= self.api_threads:
            raise ValueError(
                f"api_reserved_threads ({self.api_reserved_threads}) must be below api_threads ({self.api_threads}): "
                "speech streams get the difference"
            )
        return self

    def secret_keys(self) -> list[str]:
        """The Fernet keys of `secret_key` (the first encrypts), else those of the data dir's `secret_key` file
        (`voicefarm up` writes it); none when neither is there."""
        raw = self.secret_key
        path = self.data_dir / SECRET_KEY_FILE
        if not raw.strip() and path.is_file():
            raw = path.read_text()
        return [key.strip() for key in raw.split(",") if key.strip()]

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
            return embedded_postgres_url(self.data_dir, self.postgres_port)
        return f"sqlite:///{(self.data_dir / 'voicefarm.db').resolve()}"


_STOP_MARGIN_S = 4.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_DEFAULT_S3_KEYS = ("voicefarm", "voicefarm-secret")
# The passwords and keys of a farm that listens on a network address (voicefarm/ops/listen.py writes it).
LISTEN_FILE = "listen.json"
_LISTEN_KEYS = ("redis_password", "s3_access_key", "s3_secret_key")
# Files in the data dir: the embedded farm's secret key, and the services `voicefarm up` moved to ports of their own.
SECRET_KEY_FILE = "secret_key"
ENDPOINTS_FILE = "endpoints.json"


def recorded_endpoints(data_dir: Path) -> dict[str, tuple[str, str]]:
    """The services `voicefarm up` moved in this data dir: setting name -> (the URL it moved from, the one it moved
    to); empty when it moved nothing."""
    path = data_dir / ENDPOINTS_FILE
    try:
        found = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {
        name: (str(pair[0]), str(pair[1]))
        for name, pair in found.items()
        if name in ("broker_url", "s3_endpoint_url") and isinstance(pair, list) and len(pair) == 2
    }


def apply_listen_credentials(settings: Settings, found: dict[str, str]) -> None:
    """Put the embedded services' password and keys (`listen.json`) into settings that name the embedded defaults:
    a loopback Redis URL without a password, the default S3 keys."""
    broker = urlsplit(settings.broker_url)
    if broker.scheme == "redis" and broker.hostname in _LOOPBACK and not broker.password:
        netloc = f":{quote(found['redis_password'], safe='')}@{broker.hostname}:{broker.port or 6379}"
        settings.broker_url = urlunsplit(broker._replace(netloc=netloc))
    if (settings.s3_access_key, settings.s3_secret_key) == _DEFAULT_S3_KEYS:
        settings.s3_access_key, settings.s3_secret_key = found["s3_access_key"], found["s3_secret_key"]


def listen_credentials(data_dir: Path) -> dict[str, str]:
    """The data dir's `listen.json` (the embedded services' passwords and keys once the farm listened on a network
    address); empty when there is none or it is unreadable."""
    path = data_dir / LISTEN_FILE
    try:
        found = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict) or not all(isinstance(found.get(key), str) for key in _LISTEN_KEYS):
        return {}
    return {str(key): str(value) for key, value in found.items()}


def embedded_postgres_socket_dir(data_dir: Path) -> Path:
    """Where the embedded PostgreSQL of a data dir listens (a Unix socket, no TCP port): its own dir, or a short
    dir in the temp dir named after it when that path is too long for a socket name (107 bytes)."""
    pgdata = (data_dir / "postgres").resolve()
    if len(str(pgdata / ".s.PGSQL.5432")) <= 100:
        return pgdata
    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"voicefarm-pg-{digest}"


def embedded_postgres_url(data_dir: Path, port: int = 5432) -> str:
    """The database of the embedded PostgreSQL of a data dir, so any command finds the one `voicefarm up` runs (its
    socket is named after `postgres_port`)."""
    url = f"postgresql+psycopg://postgres@/voicefarm?host={quote(str(embedded_postgres_socket_dir(data_dir)))}"
    return url if port == 5432 else f"{url}&port={port}"


def setting_env_names() -> set[str]:
    """Every environment variable name a setting is read from (upper-case): `VOICEFARM_<FIELD>`, the declared
    aliases (`DATABASE_URL`), and for nested settings `VOICEFARM_<GROUP>__<FIELD>` and the flat name."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        names.add(f"{_PREFIX}{name}".upper())
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else []
        names.update(choice.upper() for choice in choices if isinstance(choice, str))
    for group, model in _GROUPS.items():
        names.update(f"{_PREFIX}{group}{_NESTED}{name}".upper() for name in model.model_fields)
    names.update(f"{_PREFIX}{flat}".upper() for flat in _flat_names())
    return names


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, warning on misspelled `VOICEFARM_*` variables."""
    known = setting_env_names() | ClientSettings.env_names()
    for key in os.environ:
        if key.startswith(_PREFIX) and key.upper() not in known:
            warnings.warn(f"unknown setting {key} is ignored", stacklevel=2)
    return Settings(**overrides)  # type: ignore[arg-type]


def environment() -> dict[str, str]:
    """A copy of this process's environment, to hand a child process (with changes of the caller's own)."""
    return dict(os.environ)


class ClientSettings(BaseSettings):
    """What the client commands (`voicefarm say`, `batch`, ...) and `voicefarm.client.Client` read: they talk to
    a farm's API only, so they need none of the farm's own settings."""

    model_config = SettingsConfigDict(env_prefix=_PREFIX, extra="ignore")

    api_url: str = Field(
        default="", description="The farm's API; empty means the local farm, at VOICEFARM_HOST:VOICEFARM_PORT."
    )
    host: str = Field(default="127.0.0.1", description="The local farm's API address (as `./run.sh` uses it).")
    port: int = Field(default=7860, description="The local farm's API port (as `./run.sh` uses it).")
    api_key: str = Field(default="", description="The API key; empty means the key file under the data dir.")
    data_dir: str = Field(default="", description="The local farm's data dir (its api_key, caches); empty: var.")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir or "var")

    @property
    def url(self) -> str:
        """VOICEFARM_API_URL, else the farm that `./run.sh` starts with the same VOICEFARM_HOST and _PORT."""
        if self.api_url:
            return self.api_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @classmethod
    def env_names(cls) -> set[str]:
        return {f"{_PREFIX}{name}".upper() for name in cls.model_fields}


def client_settings() -> ClientSettings:
    """VOICEFARM_API_URL, VOICEFARM_API_KEY and VOICEFARM_DATA_DIR, read now."""
    return ClientSettings()
