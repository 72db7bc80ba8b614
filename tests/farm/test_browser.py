"""The web UI end to end in a real browser: Playwright for Python driving Debian's Chromium (no browser download)
against a running farm. Clone a voice from a file, speak in it and play it; run an instruction; upload a small
CSV batch. Screenshots are kept under test-artifacts/browser/ (gitignored; CI keeps them as artefacts).

Chromium comes from Debian's `chromium` package. When it is missing and the tests run as root (CI's fresh
container), this module installs it with apt-get; without root it fails under CI=true and skips elsewhere.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.browser import ARTIFACTS, chromium_page
from tests.support.livefarm import LiveFarm, live_farm  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.browser]
REFERENCE_TEXT = "The weather is lovely today, so we are going for a long walk in the park."


@pytest.fixture
def page(live_farm: LiveFarm) -> Iterator[object]:  # noqa: F811
    with chromium_page() as page:
        yield page


def wait_job(farm: LiveFarm, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{farm.url}/v1/jobs/{job_id}", headers=farm.headers(), timeout=10).json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def reference_file(farm: LiveFarm, tmp_path: Path) -> Path:
    """A five-second speech sample made by the farm itself (a stock voice reading a sentence)."""
    body = {"text": REFERENCE_TEXT, "voice": "jm_kumo", "language": "en", "format": "wav"}
    job = requests.post(f"{farm.url}/v1/jobs", json=body, headers=farm.headers(), timeout=10).json()
    assert wait_job(farm, job["id"])["status"] == "succeeded"
    path = tmp_path / "reference.wav"
    path.write_bytes(requests.get(f"{farm.url}/v1/jobs/{job['id']}/audio", headers=farm.headers(), timeout=30).content)
    return path


@pytest.mark.qa_pool  # the page's batch lines pass the QA gate, as on `voicefarm up`
def test_clone_speak_instruct_and_batch_in_the_browser(
    live_farm: LiveFarm,  # noqa: F811
    page: object,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    expect.set_options(timeout=240_000)  # a clone or a job on a loaded 2-core machine
    sample = reference_file(live_farm, tmp_path)
    outside: list[str] = []
    page.on(
        "request",
        lambda r: None if r.url.startswith((live_farm.url, "blob:", "data:")) else outside.append(r.url),
    )
    page.goto(live_farm.url + "/")
    page.get_by_label("API key").fill(live_farm.key)
    page.get_by_label("API key").press("Tab")  # change: the UI loads voices and instructions

    # Quick cloning: upload, transcript, clone, then speak in the new voice and play it.
    page.get_by_label("Reference sample").set_input_files(str(sample))
    page.get_by_label("Transcript of the sample").fill(REFERENCE_TEXT)
    page.get_by_label("Voice name").fill("browser narrator")
    page.get_by_role("button", name="Clone voice").click()
    expect(page.locator("#clone-status")).to_contain_text("is ready")
    # The voice list reloads after the status line changes: wait for the new voice to be selected.
    expect(page.get_by_label("Voice", exact=True)).to_have_value(re.compile(r"^v_"))
    voice_id = page.get_by_label("Voice", exact=True).input_value()
    assert voice_id.startswith("v_")
    expect(page.locator("#count")).to_contain_text("/ 5000 characters")
    page.locator("#text").fill("Good evening. This is my cloned voice speaking.")
    expect(page.locator("#count")).to_contain_text("47 / 5000")
    page.get_by_role("button", name="Speak").click()
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#similarity")).to_contain_text("speaker similarity")
    page.evaluate("document.getElementById('player').play()")
    page.wait_for_function("document.getElementById('player').currentTime > 0.3")
    assert page.locator("#download").get_attribute("download", timeout=5000).endswith(".wav")  # type: ignore[union-attr]
    page.screenshot(path=str(ARTIFACTS / "1-quick-cloning.png"), full_page=True)

    # Natural-language control: an instruction from the catalogue.
    page.get_by_role("tab", name="Natural-language control").click()
    page.get_by_label("Instruction", exact=True).select_option(label="Slowly")
    expect(page.get_by_label("Instruction text")).to_have_value("Speak slowly.")
    page.get_by_label("Voice", exact=True).select_option("jf_alpha")
    page.locator("#text").fill("Take your time, there is no hurry.")
    page.get_by_role("button", name="Speak").click()
    expect(page.locator("#speak-status")).to_contain_text("succeeded")
    page.screenshot(path=str(ARTIFACTS / "2-natural-language-control.png"), full_page=True)

    # Jobs: live status of what was just made.
    page.get_by_role("tab", name="Jobs").click()
    expect(page.locator("#jobs tr")).to_have_count(4, timeout=10_000)  # reference, clone, two speeches
    expect(page.locator("#jobs")).to_contain_text("succeeded")

    # Batches: a small CSV, uploaded and followed to the end.
    csv = tmp_path / "lines.csv"
    csv.write_text("id,text,voice\nl1,First line of the batch.,jf_alpha\nl2,Second line of the batch.,jm_kumo\n")
    page.get_by_role("tab", name="Batches").click()
    page.get_by_label("Batch file").set_input_files(str(csv))
    page.get_by_label("Batch name").fill("browser batch")
    page.get_by_role("button", name="Upload batch").click()
    expect(page.locator("#batch-status")).to_contain_text("succeeded, 2 lines")
    assert page.locator("#batch-progress").evaluate("p => p.value") == 1
    expect(page.locator("#batches")).to_contain_text("browser batch")
    page.screenshot(path=str(ARTIFACTS / "3-batches.png"), full_page=True)

    # /docs renders the generated OpenAPI document with Swagger UI's files from the farm.
    page.goto(live_farm.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("voicefarm", timeout=60_000)
    expect(page.get_by_text("/v1/audio/speech").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "4-docs.png"))
    assert outside == [], outside
