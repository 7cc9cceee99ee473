"""Headless Chromium for the page tests (the `chromium_page` fixture opens the pages): Debian's `chromium`,
driven by Playwright."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="Debian chromium is not installed (.ci/run installs it)")


@dataclass
class WatchedPage:
    page: Any  # playwright.sync_api.Page (imported lazily: only browser tests need Playwright)
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt messages, dismissed
    csp_violations: list[str] = field(default_factory=list)  # the console's "Refused to ..." lines
