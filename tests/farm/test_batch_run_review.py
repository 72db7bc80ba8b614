"""`voicefarm batch` at its end: how many lines the QA gate flagged wait for review, and the review page's address
(voicefarm/client/batch_run.py), against a stand-in for the farm's client."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import pytest

from voicefarm.client.batch_run import BatchRun

AUDIO = b"RIFF fake audio"


class FakeClient:
    url = "http://farm.example:7860"

    def __init__(self, pending: int, flagged: int) -> None:
        self.view = {
            "id": "b" * 32, "lines": 2, "done": True, "counts": {"succeeded": 2}, "audio_seconds": 2.0,
            "pending_reviews": pending,
            "reviews": {"flagged": flagged, "pending": pending, "approved": flagged - pending, "rejected": 0},
        }  # fmt: skip
        digest = hashlib.sha256(AUDIO).hexdigest()
        self.lines = [
            {"line_id": "a", "status": "succeeded", "file": "a.wav", "sha256": digest, "qa": "passed"},
            {"line_id": "b", "status": "succeeded", "file": "b.wav", "sha256": digest, "qa": "needs_review"},
        ]

    def create_batch(self, **kwargs: Any) -> dict[str, Any]:
        return self.view

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self.view

    def manifest(self, batch_id: str) -> list[dict[str, Any]]:
        return self.lines

    def download(self, line: dict[str, Any], path: Path) -> str:
        Path(path).write_bytes(AUDIO)
        return hashlib.sha256(AUDIO).hexdigest()


def run(tmp_path: Path, client: FakeClient) -> int:
    lines = tmp_path / "lines.csv"
    lines.write_text("id,text\na,One.\nb,Two.\n")
    runner = BatchRun(client, lines, tmp_path / "out", {}, progress=False)  # type: ignore[arg-type]
    return runner.run()


def test_the_end_of_a_run_names_the_lines_waiting_for_review_and_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, FakeClient(pending=1, flagged=1)) == 0
    out = capsys.readouterr().out
    assert "2 of 2 lines" in out
    assert (
        f"1 of 1 lines flagged by the QA gate wait for review: http://farm.example:7860/batches/{'b' * 32}/review"
        in out
    )
    with (tmp_path / "out" / "manifest.csv").open() as fh:
        assert [(r["line_id"], r["qa"]) for r in csv.DictReader(fh)] == [("a", "passed"), ("b", "needs_review")]


def test_nothing_is_said_of_reviews_when_the_gate_flagged_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, FakeClient(pending=0, flagged=0)) == 0
    assert "QA gate" not in capsys.readouterr().out
