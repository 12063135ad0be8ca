"""The operator console (/console/ on the HTTP port) in a real browser: headless Chromium driven
by Selenium against a real ``twistd -n gamed`` with an admin token file, loaded by the load
generator (``gamed-bench fanout``) and a few wire clients playing a game.

Every wait is bounded (WebDriverWait or a deadline loop). Screenshots go to ``test-artifacts/``
(gitignored); ``docs/console.png`` is refreshed from the overview when GAMED_DOCS_SCREENSHOT=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.browser import ROOT, WAIT, screenshot
from tests.integration.helpers import GamedProcess, WireClient, heartbeat_ok, stop_process

pytestmark = pytest.mark.slow

TOKEN = "console-e2e-admin-token-0123456789"
BENCH = str(Path(sys.executable).with_name("gamed-bench"))
BENCH_ROOMS, BENCH_MEMBERS = 6, 4


class Console:
    """The console in one browser, through its element ids (gamed/console/index.html)."""

    def __init__(self, driver: webdriver.Chrome, url: str) -> None:
        self.driver = driver
        self.url = url
        self.wait = WebDriverWait(driver, WAIT)
        driver.get(url)
        self.until(
            "the console to load", lambda: driver.execute_script("return !!window.gamedConsole")
        )

    def el(self, id_: str) -> WebElement:
        return self.driver.find_element(By.ID, id_)

    def text(self, id_: str) -> str:
        return str(self.el(id_).text)

    def rows(self, tbody: str) -> list[str]:
        return [tr.text for tr in self.el(tbody).find_elements(By.TAG_NAME, "tr")]

    def until(self, what: str, cond: Callable[[], Any]) -> Any:
        def check(_d: Any) -> Any:
            try:
                return cond()
            except StaleElementReferenceException:  # a table redrawn under us: look again
                return False

        try:
            return self.wait.until(check)
        except TimeoutException:
            screenshot(self.driver, f"console-failed-{int(time.time() * 1000)}.png")
            raise AssertionError(
                f"waited {WAIT:g}s for {what}; banner={self.text('banner')!r} "
                f"result={self.text('action-result')!r}"
            ) from None

    def until_text(self, id_: str, expected: str) -> None:
        self.until(f"#{id_} to contain {expected!r}", lambda: expected in self.text(id_))

    def go(self, hash_: str) -> None:
        self.driver.execute_script("location.hash = arguments[0]", hash_)

    def fill(self, id_: str, value: object) -> None:
        el = self.el(id_)
        el.clear()
        el.send_keys(str(value))

    def click(self, id_: str) -> None:
        self.until(f"#{id_} to be clickable", lambda: self.el(id_).is_displayed())
        self.el(id_).click()

    def use_token(self, token: str) -> None:
        self.click("token-forget")
        self.fill("token-input", token)
        self.click("token-save")
        self.until_text("token-state", "token set")

    def confirm(self, expected: str) -> None:
        """The confirmation dialog asks ``expected``...; say yes."""
        self.until("the confirmation dialog", lambda: self.el("confirm").is_displayed())
        assert expected in self.text("confirm-text"), self.text("confirm-text")
        self.el("confirm-ok").click()
        self.until("the dialog to close", lambda: not self.el("confirm").is_displayed())


@pytest.fixture
def loaded_server(gamed: Any, tmp_path: Path) -> Iterator[GamedProcess]:
    """gamed with an admin token, under load from gamed-bench (killed at teardown)."""
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    server = gamed(
        "--admin-token-file",
        str(token_file),
        "--idle-timeout",
        "0",
        "--turn-timeout",
        "600",
    )
    log = open(tmp_path / "bench.log", "wb")
    bench = subprocess.Popen(
        [
            BENCH,
            "fanout",
            "--port",
            str(server.port),
            "--rooms",
            str(BENCH_ROOMS),
            "--members",
            str(BENCH_MEMBERS),
            "--rate",
            "0.5",  # 30 a minute per client: under the security plugin's 60
            "--warmup",
            "0",
            "--duration",
            "120",
            "--room-id-base",
            "100",
            "--user-id-base",
            "10000",
            "--no-uvloop",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + WAIT
        while server.stats()["sessions"] < BENCH_ROOMS * BENCH_MEMBERS:
            assert bench.poll() is None, (tmp_path / "bench.log").read_text()
            assert time.monotonic() < deadline, "the load generator did not connect in time"
            time.sleep(0.1)
        yield server
    finally:
        stop_process(bench)
        log.close()


def test_console_shows_rooms_and_a_game_and_bans_through_the_admin_api(
    loaded_server: GamedProcess, chromium: Callable[..., webdriver.Chrome]
) -> None:
    server = loaded_server
    # Room 501: ann, bob and carol play (ann's turn); room 502: victim, alone.
    ann, bob, carol = (server.client(uid) for uid in (1, 2, 3))
    for c, name in ((ann, "ann"), (bob, "bob"), (carol, "carol")):
        assert "RoomJoinSuccess" in c.join(501, name), name
    victim = server.client(7)
    assert "RoomJoinSuccess" in victim.join(502, "victim")
    ann.send({"StartGame": {"room_id": 501}})
    for c in (bob, carol):
        c.send({"ToggleReady": {"room_id": 501}})
    _wait_for(lambda: server.stats()["games"]["in_progress"] == 1, "the game to go live")
    rooms_total = BENCH_ROOMS + 2
    assert server.stats()["rooms"]["count"] == rooms_total

    console = Console(chromium(), f"http://127.0.0.1:{server.http_port}/console/")

    # Overview: the live numbers, without a token (as open as /stats).
    console.until(
        "the overview's connection count",
        lambda: _count(console.text("ov-connections")) >= BENCH_ROOMS * BENCH_MEMBERS + 4,
    )
    assert console.text("ov-rooms") == str(rooms_total)
    assert console.text("ov-version") == server.stats()["version"]
    console.until_text("ov-games", "1 live")
    console.until("a messages/s figure", lambda: console.text("ov-mps") not in ("", "\u2013"))
    path = screenshot(console.driver, "console-overview.png")
    if os.environ.get("GAMED_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(path, ROOT / "docs" / "console.png")

    # Rooms: the table has every room; searching "50" leaves ours, "in game" leaves 501.
    console.go("#/rooms")
    console.until_text("rooms-summary", f"{rooms_total} of {rooms_total} rooms")
    assert len(console.rows("rooms-body")) == rooms_total
    console.fill("rooms-search", "50")
    console.until_text("rooms-summary", f"2 of {rooms_total} rooms")
    rows = console.rows("rooms-body")
    assert rows[0].startswith("501 3 / 100") and rows[0].endswith("InProgress"), rows
    assert rows[1].startswith("502 1 / 100"), rows
    console.click("rooms-filter-game")
    console.until_text("rooms-summary", f"1 of {rooms_total} rooms")
    screenshot(console.driver, "console-rooms.png")

    # The room page: without the token, the game's progress but not who plays.
    console.el("rooms-body").find_element(By.CSS_SELECTOR, "tr[data-room='501']").click()
    console.until_text("room-game-status", "InProgress")
    console.until_text("room-round", "1 / 10")
    console.until_text("room-turn", "hidden")
    console.until_text("room-members-note", "admin token")
    # With the token: whose turn, by name, and the members.
    console.use_token(TOKEN)
    console.until_text("room-turn", "ann (1)")
    console.until("three members", lambda: len(console.rows("room-members")) == 3)
    members = console.rows("room-members")
    assert members[0].startswith("1 ann tcp"), members
    console.until("a turn clock", lambda: console.text("room-time-left").endswith("s"))
    screenshot(console.driver, "console-room.png")

    # A wrong token: the ban is refused (401) and nobody is disconnected.
    console.use_token("not-the-admin-token")
    console.go("#/security")
    console.until_text("sec-note", "wrong admin token")
    console.fill("act-user-id", 7)
    console.click("act-ban")
    console.confirm("ban user 7")
    console.until_text("action-result", "401")
    assert "wrong admin token" in console.text("action-result")
    assert heartbeat_ok(victim), "a refused ban disconnects nobody"

    # The right token: ban user 7 through the UI; the connection closes, the ban is listed.
    console.use_token(TOKEN)
    console.fill("act-user-id", 7)
    console.fill("act-reason", "console test")
    console.click("act-ban")
    console.confirm("ban user 7")
    console.until_text("action-result", "ban → 200")
    closing = victim.expect_closed()
    assert any(m.get("Error", {}).get("code") == 403 for m in closing), closing
    console.until(
        "the ban in the blocks table",
        lambda: any(r.startswith("7 console test") for r in console.rows("sec-blocks-users")),
    )
    ban_row = next(r for r in console.rows("sec-blocks-users") if r.startswith("7 "))
    assert "never (ban)" in ban_row
    console.until(
        "the ban in the recent decisions", lambda: "admin ban" in console.text("sec-recent")
    )
    screenshot(console.driver, "console-security.png")
    assert "admin POST /admin/users/7/ban from 127.0.0.1: 200" in server.log()
    assert "admin POST /admin/users/7/ban from 127.0.0.1: 401 (wrong admin token)" in server.log()

    # A cancelled confirmation sends nothing.
    console.fill("act-user-id", 2)
    console.click("act-kick")
    console.until("the confirmation dialog", lambda: console.el("confirm").is_displayed())
    console.el("confirm-cancel").click()
    console.until_text("action-result", "kick: cancelled")
    assert heartbeat_ok(bob)

    # Users: the victim's page shows the ban; Nodes: this node, one row.
    console.go("#/users/7")
    console.until_text("user-security", '"permanent": true')
    console.until_text("user-session", '"connected": false')
    console.go("#/nodes")
    console.until("one node row", lambda: len(console.rows("nodes-body")) == 1)
    assert "serving" in console.rows("nodes-body")[0]
    for c in (ann, bob, carol):
        c.close()


def _count(text: str) -> int:
    return int(text) if text.isdigit() else -1


def _wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"waited {timeout:g}s for {what}"
        time.sleep(0.05)


__all__ = ["Console", "WireClient"]
