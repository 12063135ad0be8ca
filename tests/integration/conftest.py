"""Fixtures that start real `twistd -n gamed` processes on 127.0.0.1 (port 0).

``gamed`` starts servers with options, one test's own; ``server`` is a server
with the embedded defaults shared by the tests of a module, handed to each test
idle: no connection, no room. Clients, helpers and ``poll_until`` live in
tests/integration/helpers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver

from tests.integration.browser import is_script_error, open_chromium, require_browser
from tests.integration.helpers import GamedProcess, RedisServer


@pytest.fixture
def gamed(tmp_path: Path) -> Iterator[Callable[..., GamedProcess]]:
    """A factory: ``gamed("--max-room-users", "2")`` starts a server, stopped at teardown
    (``twistd_args=("--reactor", "uvloop")`` go before ``gamed``)."""
    started: list[GamedProcess] = []

    def start(*args: str, twistd_args: tuple[str, ...] = ()) -> GamedProcess:
        d = tmp_path / f"server{len(started)}"
        d.mkdir()
        p = GamedProcess(d, *args, twistd_args=twistd_args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close_clients()
        p.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GamedProcess]:
    """One server with the embedded defaults for a whole module."""
    p = GamedProcess(tmp_path_factory.mktemp("shared-gamed"))
    yield p
    p.close_clients()
    p.stop()


@pytest.fixture
def server(shared_server: GamedProcess) -> Iterator[GamedProcess]:
    """The module's shared server, idle when the test starts and again after it.

    A test that stops the server, or needs options or counters of its own, uses
    ``gamed()`` instead.
    """
    shared_server.wait_idle()
    yield shared_server
    shared_server.close_clients()
    assert shared_server.proc.poll() is None, "a test stopped the shared server: use gamed()"
    shared_server.wait_idle()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server (127.0.0.1, a free port, no persistence) for one test."""
    r = RedisServer(tmp_path)
    yield r
    r.stop()


@pytest.fixture
def chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., webdriver.Chrome]]:
    """``chromium(width=, height=, phone=)``: a new headless Chromium WebDriver (its own
    profile, tests/integration/browser.py); all quit at teardown, and a script error in any
    page's console fails the test."""
    require_browser()
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
    drivers: list[webdriver.Chrome] = []

    def start(width: int = 1280, height: int = 900, phone: bool = False) -> webdriver.Chrome:
        driver = open_chromium(tmp_path, len(drivers), width, height, phone)
        drivers.append(driver)
        return driver

    yield start
    # A script error on any page fails the test (its console, read before the browser quits).
    errors: list[str] = []
    for d in drivers:
        try:
            errors += [e["message"] for e in d.get_log("browser") if is_script_error(e)]
        except Exception as e:  # a browser that died: say so, and still quit the others
            errors.append(f"could not read the console: {e!r}")
        finally:
            d.quit()
    assert not errors, f"errors in the page's console: {errors}"
