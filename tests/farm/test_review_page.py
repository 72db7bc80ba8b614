"""The review page in a real browser (Playwright driving Debian's Chromium, as tests/farm/test_browser.py) against
a live farm with the QA gate's pool, whose worker damages every take of the lines with "never" in them
(VOICEFARM_TEST_TAKE_DEFECT, worker/takes.py `defect_for`): those lines are flagged. Through the page, with the
keyboard and clicks: play one, approve one, reject one, re-render one with an edited text and see its new take
pass the gate. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.browser import ARTIFACTS, chromium_page
from tests.support.livefarm import LiveFarm, live_farm  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.browser]
LINES = [
    {"id": "l1", "text": "We never walk home through the forest at night."},
    {"id": "l2", "text": "She would never forget the colour of the sea."},
    {"id": "l3", "text": "They never came back from the northern island."},
    {"id": "l4", "text": "The morning was calm and bright."},
]


@pytest.fixture
def take_defects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every take of a line with "never" in it is cut short: such lines fail the gate and need review. Set before
    the live farm starts its processes (they read the environment)."""
    monkeypatch.setenv("VOICEFARM_TEST_TAKE_DEFECT", "truncate@*~never")


@pytest.fixture
def browser_page(take_defects: None, live_farm: LiveFarm) -> Iterator[Any]:  # noqa: F811
    with chromium_page() as page:
        yield page


def wait_batch(farm: LiveFarm, batch_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = requests.get(f"{farm.url}/v1/batches/{batch_id}", headers=farm.headers(), timeout=10).json()
        if batch["done"]:
            return dict(batch)
        time.sleep(1)
    raise AssertionError(f"batch {batch_id} did not finish:\n{farm.log_tail()}")


@pytest.mark.qa_pool
def test_flagged_lines_are_reviewed_in_the_browser_with_the_keyboard(
    take_defects: None,
    live_farm: LiveFarm,  # noqa: F811
    browser_page: Any,
) -> None:
    from playwright.sync_api import Page, expect

    page = browser_page
    assert isinstance(page, Page)
    expect.set_options(timeout=240_000)
    body = {"lines": LINES, "defaults": {"voice": "jm_kumo", "qa": {"retakes": 1}}, "name": "review in the browser"}
    created = requests.post(f"{live_farm.url}/v1/batches", json=body, headers=live_farm.headers(), timeout=30)
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    batch = wait_batch(live_farm, batch_id)
    assert batch["pending_reviews"] == 3, batch
    outside: list[str] = []
    page.on(
        "request",
        lambda r: None if r.url.startswith((live_farm.url, "blob:", "data:")) else outside.append(r.url),
    )

    # The batches view links to the review page; the key the UI keeps is the one the review page uses.
    page.goto(live_farm.url + "/")
    page.get_by_label("API key").fill(live_farm.key)
    page.get_by_label("API key").press("Tab")
    page.get_by_role("tab", name="Batches").click()
    link = page.get_by_role("link", name="3 of 3 to review")
    expect(link).to_have_attribute("href", f"/batches/{batch_id}/review")
    link.click()
    expect(page).to_have_url(f"{live_farm.url}/batches/{batch_id}/review")
    expect(page.locator("#summary")).to_contain_text("3 pending of 3 flagged")
    lines = page.locator("article.line")
    expect(lines).to_have_count(3)  # l4 passed the gate: not on the page
    line = {lid: page.locator(f"article.line[data-line-id='{lid}']") for lid in ("l1", "l2", "l3")}
    expect(line["l1"]).to_have_attribute("aria-current", "true")
    # The script against what was heard: the take was cut short, so the end of the script was not heard.
    expect(line["l1"].locator(".spoken del").first).to_be_visible()
    expect(line["l1"].locator(".checks")).to_contain_text("Failed checks")
    expect(line["l1"].locator("h2")).to_contain_text("2 QA takes")
    page.screenshot(path=str(ARTIFACTS / "5-review.png"), full_page=True)

    # Play the current line with the keyboard, then approve it: the next one becomes current.
    page.keyboard.press("p")
    page.wait_for_function("document.querySelector(\"article[data-line-id='l1'] audio\").currentTime > 0.2")
    page.keyboard.press("a")
    expect(line["l1"].locator(".decision")).to_have_text("approved")
    expect(line["l2"]).to_have_attribute("aria-current", "true")
    expect(page.locator("#summary")).to_contain_text("2 pending of 3 flagged")

    # Back and forth with j/k, a note, then reject with a click.
    page.keyboard.press("j")
    expect(line["l3"]).to_have_attribute("aria-current", "true")
    page.keyboard.press("ArrowUp")
    expect(line["l2"]).to_have_attribute("aria-current", "true")
    line["l2"].get_by_label("Note on line l2").fill("the last words are missing")
    line["l2"].get_by_role("button", name="Reject (r)").click()
    expect(line["l2"].locator(".decision")).to_have_text("rejected")
    expect(page.locator("#summary")).to_contain_text("1 pending of 3 flagged")

    # Re-render the third with an edited text (e opens the form): its new take passes the gate.
    expect(line["l3"]).to_have_attribute("aria-current", "true")
    page.keyboard.press("e")
    text = line["l3"].get_by_label("Text")
    expect(text).to_be_focused()
    text.fill("They came back from the northern island.")
    line["l3"].get_by_label("Speed").fill("1.1")
    line["l3"].get_by_role("button", name="Re-render", exact=True).click()
    expect(line["l3"].locator("h2")).to_contain_text("take 2")
    expect(line["l3"].locator("h2")).to_contain_text("passed the gate")
    expect(line["l3"].locator(".checks")).to_contain_text("No failed check")
    expect(page.locator("#summary")).to_contain_text("0 pending of 2 flagged")
    page.screenshot(path=str(ARTIFACTS / "6-reviewed.png"), full_page=True)

    manifest = requests.get(
        f"{live_farm.url}/v1/batches/{batch_id}/manifest", headers=live_farm.headers(), timeout=30
    ).json()
    rows = {r["line_id"]: r for r in manifest["lines"]}
    assert {k: (r["take"], r["qa"], r["review"]) for k, r in rows.items()} == {
        "l1": (1, "needs_review", "approved"),
        "l2": (1, "needs_review", "rejected"),
        "l3": (2, "passed", None),
        "l4": (1, "passed", None),
    }
    queue = requests.get(
        f"{live_farm.url}/v1/batches/{batch_id}/review?all=true", headers=live_farm.headers(), timeout=30
    ).json()
    shown = {x["line_id"]: x for x in queue["lines"]}
    assert shown["l2"]["review"]["note"] == "the last words are missing"
    assert shown["l3"]["text"] == "They came back from the northern island." and shown["l3"]["speed"] == 1.1
    assert outside == [], outside
