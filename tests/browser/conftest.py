"""The console in a real browser: Debian's chromium, headless, driven by Selenium through
chromium-driver (`make browser` installs both), against a gateway process on loopback and the
sandbox. The fixtures live in tests/support/console.py."""

from __future__ import annotations

from tests.support.console import browser, console
from tests.support.fixtures import sandbox, sandbox_options, tls

__all__ = ["browser", "console", "sandbox", "sandbox_options", "tls"]
