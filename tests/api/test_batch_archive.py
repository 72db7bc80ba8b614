"""A batch archive's entry names are unique whatever the line ids (shared/batches/service.py `file_stems`): ids
that name the archive's own files (`batch`, `manifest`), `.` and `..`, hidden names, names Windows will not
extract, and ids equal but for case. Real PostgreSQL, Redis and SeaweedFS."""

from __future__ import annotations

import io
import zipfile

from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from shared.batches.service import file_stems
from shared.config import Settings
from shared.models import Job
from shared.storage import Storage
from tests.support.batches import finish_like_a_worker
from tests.support.fixtures import auth

IDS = ["batch", ".", "..", "manifest", "Mixed", "mixed", ".hidden", "con", "ok"]


def test_archive_names_are_unique_whatever_the_line_ids(
    client: FlaskClient, api_key: str, sessions: sessionmaker[Session], farm_settings: Settings
) -> None:
    storage = Storage.from_settings(farm_settings)
    lines = [{"id": line_id, "text": f"Line number {i}."} for i, line_id in enumerate(IDS)]
    batch = client.post("/v1/batches", json={"lines": lines, "defaults": {"qa": False}}, headers=auth(api_key))
    assert batch.status_code == 202, batch.get_json()
    batch_id = batch.get_json()["id"]
    manifest = client.get(f"/v1/batches/{batch_id}/manifest", headers=auth(api_key)).get_json()["lines"]
    for line in manifest:
        finish_like_a_worker(sessions, storage, line["job_id"], data=f"audio of {line['line_id']}".encode())
    manifest = client.get(f"/v1/batches/{batch_id}/manifest", headers=auth(api_key)).get_json()["lines"]
    files = {line["line_id"]: line["file"] for line in manifest}
    assert files == {
        "batch": "batch~1.wav",  # the whole batch's subtitles are batch.srt
        ".": "line~1.wav",
        "..": "line~2.wav",
        "manifest": "manifest~1.wav",  # manifest.csv is the archive's own
        "Mixed": "Mixed.wav",
        "mixed": "mixed~1.wav",  # Mixed.wav and mixed.wav are one file on a case-insensitive disk
        ".hidden": "hidden~1.wav",
        "con": "con~1.wav",
        "ok": "ok.wav",
    }
    response = client.get(f"/v1/batches/{batch_id}/archive", headers=auth(api_key))
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.get_data())) as archive:
        names = archive.namelist()
        assert len(names) == len({n.casefold() for n in names}) == 2 * len(IDS) + 2  # audio, subtitles, whole
        assert "batch.srt" in names and "manifest.csv" in names
        assert not any(n.startswith(".") or "/" in n for n in names)
        for line_id, name in files.items():
            assert archive.read(name) == f"audio of {line_id}".encode()
            assert name.replace(".wav", ".srt") in names
        # The manifest inside names the same files.
        assert "batch~1.wav" in archive.read("manifest.csv").decode()


def test_file_stems_keep_plain_ids_and_are_stable() -> None:
    jobs = [Job(id=f"j{i}", line_id=line_id, line_no=i + 1) for i, line_id in enumerate(["ep1-0001", "A.b_c", "x"])]
    assert file_stems(jobs) == {"j0": "ep1-0001", "j1": "A.b_c", "j2": "x"}
    assert file_stems(jobs) == file_stems(list(jobs))
    # A name given once is never given again, even to a row whose id looks generated (ids cannot hold ~).
    odd = [Job(id="a", line_id="batch", line_no=1), Job(id="b", line_id="batch~1", line_no=2)]
    assert file_stems(odd) == {"a": "batch~1", "b": "batch~1~1"}
