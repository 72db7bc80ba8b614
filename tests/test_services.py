"""The throwaway services start, answer, enforce what production relies on, and stop."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.conftest import S3Settings
from voicefarm import services


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_free_port_is_bindable() -> None:
    port = services.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_redis_starts_answers_and_stops(tmp_path: Path) -> None:
    import redis

    svc = services.start_redis(tmp_path / "redis")
    try:
        client = redis.Redis.from_url(svc.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
    finally:
        svc.stop()
    svc.stop()  # a second stop is harmless
    assert svc.process is not None and svc.process.returncode is not None
    assert not services.redis_ready(int(svc.info["port"]))


def test_persistent_redis_keeps_data_across_restart(tmp_path: Path) -> None:
    import redis

    port = services.free_port()
    for expected in (None, b"kept"):
        svc = services.start_redis(tmp_path / "redis", port=port, persistent=True)
        try:
            client = redis.Redis.from_url(svc.url)
            assert client.get("k") == expected
            client.set("k", "kept")
            client.close()
        finally:
            svc.stop()


def test_seaweedfs_round_trip_and_rejects_bad_signature(tmp_path: Path) -> None:
    svc = services.start_seaweedfs(tmp_path / "s3", access_key="ak-test", secret_key="sk-test")
    try:
        good = S3Settings(svc.url, "ak-test", "sk-test", "round-trip")
        client = good.client()
        client.create_bucket(Bucket=good.bucket)
        client.put_object(Bucket=good.bucket, Key="a/b.txt", Body=b"hello")
        assert client.get_object(Bucket=good.bucket, Key="a/b.txt")["Body"].read() == b"hello"

        bad = good.client(secret_key="not-the-secret")
        for call in (
            lambda: bad.list_buckets(),
            lambda: bad.get_object(Bucket=good.bucket, Key="a/b.txt"),
            lambda: bad.put_object(Bucket=good.bucket, Key="evil", Body=b"x"),
        ):
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied"}
        unknown = S3Settings(svc.url, "who-is-this", "sk-test", good.bucket).client()
        with pytest.raises(ClientError):
            unknown.list_buckets()
        # A presigned URL with a tampered signature must be refused as well.
        import urllib.error
        import urllib.request

        url = client.generate_presigned_url("get_object", Params={"Bucket": good.bucket, "Key": "a/b.txt"})
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.read() == b"hello"
        tampered = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
        with pytest.raises(urllib.error.HTTPError) as http_err:
            urllib.request.urlopen(tampered, timeout=5)
        assert http_err.value.code == 403
        expiring = client.generate_presigned_url(
            "get_object", Params={"Bucket": good.bucket, "Key": "a/b.txt"}, ExpiresIn=1
        )
        time.sleep(2.1)
        with pytest.raises(urllib.error.HTTPError) as http_err:
            urllib.request.urlopen(expiring, timeout=5)
        assert http_err.value.code == 403
    finally:
        svc.stop()
    svc.stop()
    assert not services.s3_ready(svc.url)


def test_postgres_starts_answers_and_stops(tmp_path: Path) -> None:
    import psycopg

    try:
        svc = services.start_postgres(tmp_path / "pg")
    except services.ServiceError as exc:
        if "not found" in str(exc):
            pytest.skip(str(exc))
        raise
    try:
        assert svc.url.endswith("/voicefarm")
        with psycopg.connect(svc.url) as conn:
            assert conn.execute("select current_database()").fetchone() == ("voicefarm",)
    finally:
        svc.stop()
    svc.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(svc.url, connect_timeout=2)
    assert all(not path.exists() for path in svc.cleanup_paths)


def test_fixtures_give_working_services(
    database_url_pg: str, fresh_broker_url: str, module_s3_settings: S3Settings
) -> None:
    import psycopg
    import redis

    with psycopg.connect(database_url_pg) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    client = redis.Redis.from_url(fresh_broker_url)
    assert client.dbsize() == 0
    client.close()
    s3 = module_s3_settings.client()
    s3.put_object(Bucket=module_s3_settings.bucket, Key="x", Body=b"1")
    assert s3.list_objects_v2(Bucket=module_s3_settings.bucket)["KeyCount"] == 1


def test_weed_binary_is_found() -> None:
    assert Path(services.weed_executable()).is_file()
    assert Path(services.redis_executable()).is_file()
