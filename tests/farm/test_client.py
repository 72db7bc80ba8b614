"""voicefarm.client.api's retries against a real HTTP server on loopback that answers 429 and 503 first."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from voicefarm.client.api import ApiError, Client


class Flaky(BaseHTTPRequestHandler):
    """Answers each path's scripted statuses in turn (then 200), recording what it saw."""

    script: dict[str, list[tuple[int, dict[str, str]]]] = {}
    seen: list[tuple[str, str, float, dict[str, str]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.seen.append((self.command, self.path, time.monotonic(), dict(self.headers)))
        steps = self.script.get(self.path, [])
        status, headers = steps.pop(0) if steps else (200, {})
        body = json.dumps(
            {"id": "x", "status": "queued"} if status < 400 else {"error": {"code": "busy", "message": "later"}}
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Flaky.script, Flaky.seen = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_429_and_503_are_retried_honouring_retry_after(server: str) -> None:
    Flaky.script["/v1/jobs"] = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "1"})]
    client = Client(server, "k")
    started = time.monotonic()
    job = client.submit_job("Hello.", voice="jf_alpha")
    assert job["id"] == "x" and time.monotonic() - started >= 2.0
    posts = [s for s in Flaky.seen if s[0] == "POST"]
    assert len(posts) == 3
    # Every try carries the same Idempotency-Key, so a retried submission is one job.
    assert len({s[3]["Idempotency-Key"] for s in posts}) == 1
    assert posts[1][2] - posts[0][2] >= 0.95 and posts[2][2] - posts[1][2] >= 0.95


def test_other_errors_raise_api_error_at_once(server: str) -> None:
    Flaky.script["/v1/jobs/nope"] = [(404, {})]
    with pytest.raises(ApiError) as info:
        Client(server, "k").get_job("nope")
    assert info.value.status == 404 and info.value.code == "busy"
    assert len(Flaky.seen) == 1


def test_the_key_is_found_in_the_data_dir(tmp_path, monkeypatch: pytest.MonkeyPatch, server: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("VOICEFARM_API_KEY", raising=False)
    monkeypatch.setenv("VOICEFARM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VOICEFARM_API_URL", server)
    (tmp_path / "api_key").write_text("secret-key\n")
    client = Client.from_env()
    client.get_job("abc")
    assert client.url == server and Flaky.seen[-1][3]["Authorization"] == "Bearer secret-key"


def test_cli_speech_options_become_request_fields_the_api_accepts() -> None:
    import argparse

    from shared.schemas import JobRequest
    from voicefarm.client import commands as client_cli

    parser = argparse.ArgumentParser()
    client_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        "batch l.csv --out d --voice af_heart --loudness -16 --trim-silence 0.2 --channels 2 --words --no-qa".split()
    )
    options = client_cli._options(args)
    assert options == {
        "voice": "af_heart", "loudness": -16.0, "trim_silence_s": 0.2, "channels": 2, "words": True, "qa": False,
    }  # fmt: skip
    JobRequest(text="A line.", **options)  # every name is a field of a job or batch line
    # Unset flags send nothing, so the farm's defaults (the QA gate on for batch lines) apply.
    assert client_cli._options(parser.parse_args("batch lines.csv --out d".split())) == {}
    assert client_cli._options(parser.parse_args("say hi -o x.m4a --qa".split())) == {"qa": True}
