"""A real headless Chromium (Selenium) for the page tests (``tests/e2e/test_chat_page.py``, ``test_admin_page.py``).

Needs Debian's ``chromium`` and ``chromium-driver`` (``bash deploy/system-deps.sh`` installs them, or set
``CITELINE_CHROMIUM`` / ``CITELINE_CHROMEDRIVER``); without them the tests fail, they do not skip. Screenshots and
the driver's log go to ``$CITELINE_TEST_ARTIFACTS`` (default ``tests/artifacts/``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM = os.environ.get("CITELINE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CITELINE_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 60


def artifacts() -> Path:
    path = Path(os.environ.get("CITELINE_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def chromium(what: str, *, size: tuple[int, int], log: str) -> Iterator:
    """A headless Chromium at ``size``, its driver logging to ``artifacts() / log``; quit on exit. ``what``
    names the tests in the failure that says how to install a missing browser."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(f"{what} need Chromium and its WebDriver; missing: {', '.join(missing)}. Install them with "
                    "`bash deploy/system-deps.sh` (as root), i.e. `apt-get install -y chromium chromium-driver` on "
                    "Debian (or set CITELINE_CHROMIUM / CITELINE_CHROMEDRIVER)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-dev-shm-usage", f"--window-size={size[0]},{size[1]}", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(artifacts() / log)), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def find(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def find_all(driver, css: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def screenshot(driver, name: str) -> Path:
    path = artifacts() / name
    path.unlink(missing_ok=True)
    assert driver.save_screenshot(str(path)), path
    return path
