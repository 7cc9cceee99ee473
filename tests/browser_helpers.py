"""Headless Chromium for the page tests: Debian's `chromium` driven by Playwright (no browser download), with
the page's dialogs and Content-Security-Policy violations recorded."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# flags for a closed network and a root user (see .ci/run)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="Debian chromium is not installed (.ci/run installs it)")


@dataclass
class WatchedPage:
    page: Any  # playwright.sync_api.Page (imported lazily: only browser tests need Playwright)
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt messages, dismissed
    csp_violations: list[str] = field(default_factory=list)  # the console's "Refused to ..." lines


@contextmanager
def chromium_page(**context_options: Any) -> Iterator[WatchedPage]:
    """A fresh page in headless Chromium; `context_options` go to `browser.new_context` (e.g. headers)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900}, **context_options)
            watched = WatchedPage(context.new_page())

            def on_dialog(dialog: Any) -> None:
                watched.dialogs.append(dialog.message)
                dialog.dismiss()

            def on_console(message: Any) -> None:
                if "Content Security Policy" in message.text:
                    watched.csp_violations.append(message.text)

            watched.page.on("dialog", on_dialog)
            watched.page.on("console", on_console)
            yield watched
        finally:
            browser.close()
