"""Refresh docs/screenshot.png: start the demo, search with one demo image in Chromium, take a screenshot.

Usage: .venv/bin/python scripts/screenshot_demo.py [--query demo/images/horse/0003.jpg] [--out docs/screenshot.png]
Needs Debian's chromium (/usr/bin/chromium) and the shipped demo checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.server_process import free_port, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--query", type=Path, default=ROOT / "demo/images/horse/0003.jpg")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/screenshot.png")
    parser.add_argument("--var-dir", type=Path, default=ROOT / "var/screenshot")
    args = parser.parse_args()
    port = free_port()
    server = start_server(
        [sys.executable, "-m", "app.quickstart", "--port", str(port), "--var-dir", str(args.var_dir)],
        port=port,
        log=args.var_dir / "screenshot-server.log",
        env={**os.environ, "MSIR_ACCESS_LOG": "false"},
        cwd=ROOT,
        timeout_s=180,
        poll_s=0.5,
    )
    url = server.url
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.set_input_files("#file-input", str(args.query))
            expect(page.locator("#results")).to_have_attribute("aria-busy", "false")
            expect(page.locator("#grid .result").first).to_be_visible()
            all_loaded = "[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)"
            page.wait_for_function(all_loaded)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        stop_server(server, sig=signal.SIGINT)  # the quick start stops cleanly on Ctrl-C


if __name__ == "__main__":
    main()
