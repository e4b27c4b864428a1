"""Regenerate the README's screenshot (docs/report.png) from a run's report.html.

The top of the page at a 1280x800 viewport (device scale 1), down to the bottom of the first
figure (the throughput figure), in headless Chromium driven by Playwright with the system browser:

    .venv/bin/harness run suites/long_ctx.yaml --out /tmp/shot      # on a quiet machine
    .venv/bin/python scripts/readme_screenshot.py /tmp/shot/<run>/report.html [docs/report.png]

Needs `playwright` (the `test` extra: `make install`) and Debian's chromium (`make browser`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
WIDTH, HEIGHT = 1280, 800


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path, nargs="?", default=Path("docs/report.png"))
    ap.add_argument("--browser", default="/usr/bin/chromium")
    ap.add_argument("--until", default="#fig-throughput-0", help="CSS selector to end below")
    args = ap.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.browser, args=ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto(args.report.resolve().as_uri())
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=120_000)
        box = page.locator(args.until).bounding_box()
        bottom = max(int(box["y"] + box["height"]) + 8 if box else HEIGHT, HEIGHT)
        clip = {"x": 0, "y": 0, "width": WIDTH, "height": bottom}
        page.screenshot(path=str(args.out), full_page=True, clip=clip)
        browser.close()
    print(f"{args.out}: {WIDTH}x{bottom}")


if __name__ == "__main__":
    main()
