"""Draw docs/preview.png: the preview page with the docs' example 3 built on
it (both layers partly off-canvas). Needs a running `compositor serve`.

    python scripts/make_page_screenshot.py http://127.0.0.1:8080
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"template_w": "3828", "template_h": "3828", "overlay_template_x": "2049", "overlay_template_y": "0",
          "origin_w": "3062", "origin_h": "3828", "overlay_origin_x": "-72", "overlay_origin_y": "-84"}  # fmt: skip


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1500, "height": 860})
        page.goto(base + "/")
        page.set_input_files("#template_file", str(ROOT / "fixtures/images/template.jpg"))
        page.wait_for_function("document.getElementById('body_json').textContent.includes('template_url')")
        page.set_input_files("#origin_file", str(ROOT / "fixtures/images/foreground.png"))
        page.wait_for_function("document.getElementById('body_json').textContent.split('/uploads/').length === 3")
        for field, value in FIELDS.items():
            page.fill(f"#{field}", value)
        page.wait_for_timeout(2500)
        page.screenshot(path=str(ROOT / "docs" / "preview.png"))
        browser.close()


if __name__ == "__main__":
    main()
