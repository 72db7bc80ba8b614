"""Debian's Chromium driven by Playwright for the browser tests: no browser download, a fresh profile each time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.needs import debian_tool

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


def ensure_chromium() -> str:
    return CHROMIUM if Path(CHROMIUM).exists() else debian_tool("chromium", "chromium")


@contextlib.contextmanager
def chromium_page(extra_args: tuple[str, ...] = ()) -> Iterator[Any]:
    """A page in a new headless Chromium, closed afterwards; screenshots go to ARTIFACTS. `extra_args` are more
    Chromium switches (a fake microphone, for one)."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=[*ARGS, *extra_args], headless=True)
        context = browser.new_context(viewport={"width": 1100, "height": 1300})
        page = context.new_page()
        page.set_default_timeout(240_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()
