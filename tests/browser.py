"""Headless Chromium for the page tests: Debian's `chromium` driven by Playwright, no browser download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def chromium_playwright() -> Any:
    """Playwright's ``sync_playwright``, or a skip when Chromium or Playwright is not installed."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed").sync_playwright


def watch(page: Any) -> dict[str, list[str]]:
    """Record a page's console errors, uncaught exceptions, dialogs (dismissed) and requested URLs."""
    seen: dict[str, list[str]] = {"console": [], "errors": [], "dialogs": [], "requests": []}
    page.on("console", lambda m: seen["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("request", lambda r: seen["requests"].append(r.url))
    return seen
