"""Farm fixtures on top of the service fixtures: settings, a migrated database, API keys, an app client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from shared import tenants
from shared.config import Settings
from shared.db import make_engine, make_session_factory, migrate, transaction
from shared.models import Base
from shared.provenance import consent
from tests.conftest import S3Settings


@pytest.fixture(scope="session")
def migrated_pg(database_url_pg: str) -> str:
    url = Settings(database_url=database_url_pg).resolved_database_url()
    migrate(url)
    return url


def _empty_tables(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        names = ", ".join(t.name for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty job database: a SQLite file, then PostgreSQL (each test runs on both)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'voicefarm.db'}"
        migrate(url)
        return url
    url = str(request.getfixturevalue("migrated_pg"))
    _empty_tables(url)
    return url


@pytest.fixture
def pg_database_url(migrated_pg: str) -> str:
    """The PostgreSQL database alone, emptied, for tests that need not run twice."""
    _empty_tables(migrated_pg)
    return migrated_pg


def make_settings(database_url: str, broker_url: str, s3: S3Settings, data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        broker_url=broker_url,
        s3_endpoint_url=s3.endpoint_url,
        s3_bucket=s3.bucket,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_region=s3.region,
    )


@pytest.fixture
def farm_settings(
    pg_database_url: str, fresh_broker_url: str, module_s3_settings: S3Settings, tmp_data_dir: Path
) -> Settings:
    return make_settings(pg_database_url, fresh_broker_url, module_s3_settings, tmp_data_dir)


@pytest.fixture
def sessions(farm_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(farm_settings.resolved_database_url())
    yield make_session_factory(engine)
    engine.dispose()


def new_api_key(
    sessions: sessionmaker[Session], tenant: str, role: str = tenants.PLAIN, *, consent_policy: str = "off"
) -> str:
    """A key of `tenant`. The tenant clones without a consent statement (policy off) unless `consent_policy` says
    otherwise: new tenants are `verified` (shared/provenance/consent.py), which tests/api/test_consent.py covers."""
    with transaction(sessions) as session:
        row, plaintext = tenants.create_key(session, tenant, role=role)
        consent.set_policy_by_id(session, row.tenant_id, consent_policy)
    return plaintext


@pytest.fixture
def api_key(sessions: sessionmaker[Session]) -> str:
    return new_api_key(sessions, "acme")


@pytest.fixture
def app(farm_settings: Settings) -> Flask:
    from producer.app import create_app

    return create_app(farm_settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
