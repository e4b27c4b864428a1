"""A headless Chromium (the Debian `chromium` package) driven by Playwright for Python.

Playwright's own browser downloads do not work on these machines, so we launch the system
executable. Missing pieces skip the tests with the install command, except under CI (CI=true),
where `make browser` has installed them and a skip would hide a broken page.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def chromium_path() -> str | None:
    found = os.environ.get("HARNESS_CHROMIUM") or shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _missing(why: str) -> None:
    message = (
        f"{why}; install with `make browser` (apt-get install chromium; pip install playwright)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (Python) is not installed")
    executable = chromium_path()
    if executable is None:
        _missing("no chromium executable on PATH")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_report(browser):
    """Open an HTML report; returns the page and the console errors / page errors it produced."""
    pages = []

    def open_(path: Path, timeout_ms: int = 60_000):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
        page.goto(path.resolve().as_uri())
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=timeout_ms)
        pages.append(page)
        return page, errors

    yield open_
    for page in pages:
        if not page.is_closed():
            page.close()
