"""Screenshot the ops dashboard (docs/dashboard.png) with Debian's Chromium through Playwright.

    python scripts/ops_screenshot.py --url http://127.0.0.1:8000 --user admin --password admin

Logs in through the admin's form, opens /ops/, waits for a refresh, and saves a full-page PNG.
Never `playwright install`: the browser is the system's (PLAYWRIGHT_CHROMIUM).
"""

from __future__ import annotations

import argparse
import os

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--out", default="docs/dashboard.png")
    parser.add_argument("--width", type=int, default=1440)
    options = parser.parse_args()
    chromium = os.environ.get("PLAYWRIGHT_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": options.width, "height": 900})
        page.goto(f"{options.url}/admin/login/?next=/ops/")
        page.fill("#id_username", options.user)
        page.fill("#id_password", options.password)
        page.click("input[type=submit]")
        page.wait_for_url(f"{options.url}/ops/")
        first = page.text_content("#updated")  # the page's own snapshot; wait for a refresh
        page.wait_for_function(f"document.querySelector('#updated').textContent !== {first!r}")
        page.screenshot(path=options.out, full_page=True)
        browser.close()
    print(f"saved {options.out}")


if __name__ == "__main__":
    main()
