"""A real browser for the dashboard's tests: Debian's Chromium, driven by selenium through its ChromeDriver.

Guarantees:
- `browser()` starts a headless Chromium (`/usr/bin/chromium`, `/usr/bin/chromedriver`; never a download:
  the driver's path is given) with a new empty profile, a 1280x800 window and the flags this machine's closed
  network needs (no background networking, no component updates, no QUIC), and always quits it, profile
  removed. `javascript=False` starts it with JavaScript off (Chrome's content setting).
- Without Chromium or its driver the test fails, saying what to install (`bash scripts/setup-host`): it never
  skips.
- `wait_css` / `wait_text` wait for what a user would see, with a deadline, and fail naming what they
  waited for and what the page showed.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,800",
)  # fmt: skip


@contextlib.contextmanager
def browser(*, javascript: bool = True) -> Iterator[Any]:
    """A headless Chromium driven by selenium (a ``selenium.webdriver.Chrome``); quit at the end."""
    if not CHROMIUM.exists() or not DRIVER.exists():
        pytest.fail(f"no {CHROMIUM} or {DRIVER}: apt-get install -y chromium chromium-driver "
                    "(bash scripts/setup-host installs them)", pytrace=False)  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="reconciler-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    try:
        driver.set_page_load_timeout(20)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver: Any, found: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if found():
                return
        except Exception:  # an element replaced while it was read (the page refreshed): look again
            pass
        if time.monotonic() > deadline:
            body = driver.find_element("tag name", "body").text
            raise AssertionError(f"no {what} within {timeout:g}s; the page shows:\n{body[-3000:]}")
        time.sleep(0.05)


def wait_css(driver: Any, selector: str, timeout: float = 10.0) -> Any:
    """The first element matching ``selector`` once there is one."""
    wait_until(driver, lambda: bool(driver.find_elements("css selector", selector)), selector, timeout)
    return driver.find_element("css selector", selector)


def wait_text(driver: Any, selector: str, text: str, timeout: float = 10.0) -> str:
    """The text of the first element matching ``selector`` once it holds ``text``.

    The text is the one read while waiting: the live page may replace the element right after (a pass ended),
    and reading it again then would fail on an element no longer there.
    """
    seen: list[str] = []

    def holds() -> bool:
        seen[:] = [t for t in (e.text for e in driver.find_elements("css selector", selector)) if text in t][:1]
        return bool(seen)

    wait_until(driver, holds, f"{selector} holding {text!r}", timeout)
    return seen[0]
