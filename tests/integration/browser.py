"""Headless Chromium for the browser tests (the play page and the operator console).

Debian's ``chromium`` and ``chromium-driver`` are required (`.ci/install-deps.sh` installs them
during ``make test``): without them these tests fail, they are never skipped. Selenium is told
where the driver and the browser are, and runs offline, so it never downloads anything.
Screenshots go to ``test-artifacts/`` (gitignored). The ``chromium`` fixture (conftest.py)
opens browsers with ``open_chromium`` and quits them at teardown, failing the test on any
script error in a page's console.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15.0  # seconds: the bound of every wait on a page
# The flags this machine (and CI) needs: no sandbox as root, no GPU, nothing fetched.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"the browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} "
            "missing): run `bash .ci/install-deps.sh` (make test does) or "
            "`apt-get install chromium chromium-driver`",
            pytrace=False,
        )


def open_chromium(
    workdir: Path, n: int, width: int = 1280, height: int = 900, phone: bool = False
) -> webdriver.Chrome:
    """A new headless Chromium WebDriver with its own profile under ``workdir``."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={workdir / f'chromium-profile-{n}'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    if phone:  # a window cannot be that narrow: emulate the phone's screen instead
        metrics = {"width": width, "height": height, "pixelRatio": 1.0, "mobile": True}
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": metrics})
    else:
        options.add_argument(f"--window-size={width},{height}")
    service = Service(executable_path=CHROMEDRIVER, log_output=str(workdir / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


def is_script_error(entry: dict[str, Any]) -> bool:
    # "javascript" and "console-api" sources; a refused or closed socket, or an HTTP error
    # status a page expected (a 401 the console shows), is "network".
    return entry.get("level") == "SEVERE" and entry.get("source") != "network"


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.save_screenshot(str(path)), f"no screenshot at {path}"
    return path
