"""Verified consent in the web UI, in a real browser (Playwright driving Debian's Chromium) against a live farm:
quick cloning shows a consent statement, records the speaker reading it through the browser's microphone with
MediaRecorder, and sends it with the reference; the farm's clone job checks it (Whisper, the speaker encoder) and
the voice becomes ready with its consent record.

The microphone is Chromium's fake capture device playing a WAV file (`--use-file-for-fake-audio-capture`): the
speaker is Debian's flite voice `slt`, which also speaks the reference sample. Chromium opens the file when the
page starts recording, so the test writes the statement's reading into it once the page shows the statement.
Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf
from sqlalchemy.orm import Session, sessionmaker

from shared.db import transaction
from shared.provenance import consent
from tests.support.browser import ARTIFACTS, chromium_page
from tests.support.livefarm import LiveFarm, live_farm  # noqa: F401  (fixture)
from tests.support.needs import debian_tool

pytestmark = [pytest.mark.slow, pytest.mark.browser]
REFERENCE = "Every morning I walk to the station, buy a paper, and read the weather report while the train is late."


def flite(text: str, out: Path) -> float:
    """`out` = flite's voice slt reading `text` (with a little silence around it); returns its duration in s."""
    command = debian_tool("flite", "flite")
    subprocess.run([command, "-voice", "slt", "-t", text, "-o", str(out)], check=True)
    audio, rate = sf.read(out, dtype="float32")
    pad = np.zeros(int(rate * 0.3), dtype=np.float32)
    sf.write(out, np.concatenate([pad, audio, pad]), rate, subtype="PCM_16")
    return float((len(audio) + 2 * len(pad)) / rate)


def warm_up(farm: LiveFarm, sample: Path, timeout: float = 600) -> None:
    """A first clone (the tenant's policy is still off) loads Whisper and renders the stock voices' calibration in
    the worker, so that the clone under test spends its time limit on its own checks."""
    with sample.open("rb") as fh:
        files = {"audio": ("warm-up.wav", fh.read())}
    voice = requests.post(f"{farm.url}/v1/voices", files=files, headers=farm.headers(), timeout=30).json()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and voice["status"] == "pending":
        time.sleep(2)
        voice = requests.get(f"{farm.url}/v1/voices/{voice['id']}", headers=farm.headers(), timeout=10).json()
    assert voice["status"] == "ready", (voice, farm.log_tail())


@pytest.fixture
def microphone(tmp_path: Path) -> Path:
    path = tmp_path / "microphone.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")  # replaced before recording
    return path


@pytest.fixture
def page(live_farm: LiveFarm, microphone: Path) -> Iterator[object]:  # noqa: F811
    fake_microphone = (
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}%noloop",
    )
    with chromium_page(fake_microphone) as page:
        yield page


def test_quick_cloning_records_the_consent_statement_in_the_browser(
    live_farm: LiveFarm,  # noqa: F811
    page: object,
    microphone: Path,
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    expect.set_options(timeout=300_000)  # a clone with its consent check on a loaded 2-core machine
    sample = tmp_path / "reference.wav"
    flite(REFERENCE, sample)
    warm_up(live_farm, sample)
    with transaction(sessions) as session:
        consent.set_policy(session, "live", consent.VERIFIED)

    page.goto(live_farm.url + "/")
    page.get_by_label("API key").fill(live_farm.key)
    page.get_by_label("API key").press("Tab")
    page.get_by_label("Reference sample").set_input_files(str(sample))
    page.get_by_label("Transcript of the sample").fill(REFERENCE)
    page.get_by_label("Voice name").fill("consenting narrator")

    # Without a statement the farm refuses before any work, and the page says why.
    page.get_by_role("button", name="Clone voice").click()
    expect(page.locator("#clone-status")).to_contain_text("consent_required")

    page.get_by_role("button", name="Get a consent statement").click()
    expect(page.locator("#consent-text")).to_be_visible()
    expect(page.locator("#consent-policy")).to_contain_text("policy: verified")
    text = page.locator("#consent-text").inner_text()
    assert text.startswith("I agree that my voice may be cloned"), text
    seconds = flite(text, microphone)  # the speaker reads it into the microphone

    page.get_by_role("button", name="Record the statement").click()
    expect(page.locator("#consent-status")).to_contain_text("recording")
    time.sleep(seconds + 0.5)
    page.get_by_role("button", name="Stop recording").click()
    expect(page.locator("#consent-status")).to_contain_text("recorded")
    page.screenshot(path=str(ARTIFACTS / "consent-1-recorded.png"), full_page=True)

    page.get_by_role("button", name="Clone voice").click()
    expect(page.locator("#clone-status")).to_contain_text("is ready")
    page.screenshot(path=str(ARTIFACTS / "consent-2-ready.png"), full_page=True)
    voices = requests.get(f"{live_farm.url}/v1/voices", headers=live_farm.headers(), timeout=10).json()["voices"]
    (voice,) = [v for v in voices if v["name"] == "consenting narrator"]
    record = voice["consent"]
    assert record["method"] == "verified" and record["status"] == "verified", record
    assert record["statement"] == text and record["recording"] is True
    assert len(record["scores"]["words_missed"]) <= consent.MAX_MISSED_WORDS, record
    assert record["scores"]["similarity"] >= record["scores"]["min_similarity"], record
