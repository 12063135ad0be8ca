"""The play page in a real browser: headless Chromium driven by Selenium against a real
``twistd -n gamed`` (its WebSocket port serves the page at / and the socket at /ws).

Debian's ``chromium`` and ``chromium-driver`` are required (`.ci/install-deps.sh` installs them
during ``make test``): without them these tests fail, they are never skipped. The browsers are
set up in tests/integration/browser.py (offline: nothing is ever downloaded). Every wait
is a bounded WebDriverWait. Screenshots of the page go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from gamed import token as gamed_token
from tests.integration.browser import ROOT, WAIT, screenshot
from tests.integration.helpers import GamedProcess

pytestmark = pytest.mark.slow

# -- the server and the browsers ------------------------------------------------------------


@pytest.fixture
def start_server(gamed: Any) -> Callable[..., tuple[GamedProcess, str]]:
    """``start_server(*args)``: a gamed (its WebSocket port on 127.0.0.1); (server, page URL)."""

    def start(*args: str) -> tuple[GamedProcess, str]:
        server = gamed(*args)
        assert server.ws_port, "gamed started without its WebSocket port"
        return server, f"http://127.0.0.1:{server.ws_port}/"

    return start


@pytest.fixture
def browser(chromium: Callable[..., webdriver.Chrome]) -> Callable[..., Page]:
    """``browser(url)``: a new headless Chromium (its own profile) on the page; all quit at
    teardown, a script error in its console failing the test (the ``chromium`` fixture,
    tests/integration/conftest.py)."""

    def open_page(url: str, width: int = 1280, height: int = 900, phone: bool = False) -> Page:
        driver = chromium(width, height, phone)
        driver.get(url)
        return Page(driver)

    return open_page


class Page:
    """The play page in one browser, through its element ids (gamed/static/index.html)."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver
        self.wait = WebDriverWait(driver, WAIT)
        self.wait.until(lambda d: d.execute_script("return !!window.gamed"), "page did not load")

    # -- reading -------------------------------------------------------------
    def el(self, id_: str) -> WebElement:
        return self.driver.find_element(By.ID, id_)

    def text(self, id_: str) -> str:
        return str(self.el(id_).text)

    def lines(self, id_: str) -> list[str]:
        return [li.text for li in self.el(id_).find_elements(By.TAG_NAME, "li")]

    def until(self, what: str, cond: Callable[[], Any]) -> Any:
        """Wait (bounded) for cond() to be truthy; the failure says what and shows the page."""
        try:
            return self.wait.until(lambda _d: cond())
        except TimeoutException:
            self.screenshot(f"failed-{int(time.time() * 1000)}.png")
            raise AssertionError(
                f"waited {WAIT:g}s for {what}; status={self.text('status')!r} "
                f"errors={self.lines('errors')} chat={self.lines('chat-log')[-8:]}"
            ) from None

    def until_text(self, id_: str, expected: str) -> None:
        self.until(f"#{id_} to contain {expected!r}", lambda: expected in self.text(id_))

    def until_line(self, id_: str, expected: str) -> None:
        self.until(
            f"a line of #{id_} with {expected!r}",
            lambda: any(expected in line for line in self.lines(id_)),
        )

    # -- acting ---------------------------------------------------------------
    def click(self, id_: str) -> None:
        self.until(f"#{id_} to be enabled", lambda: self.el(id_).is_enabled())
        self.el(id_).click()

    def fill(self, id_: str, value: object) -> None:
        el = self.el(id_)
        el.clear()
        el.send_keys(str(value))

    def connect(self, user_id: int, nickname: str, token: str = "") -> None:
        self.fill("user-id", user_id)
        self.fill("nickname", nickname)
        self.fill("token", token)
        self.click("connect-btn")

    def join(self, room: int) -> None:
        self.fill("room-id", room)
        self.click("join-btn")

    def say(self, text: str) -> None:
        self.until("the chat input to be enabled", lambda: self.el("chat-input").is_enabled())
        self.fill("chat-input", text)
        self.click("chat-send")

    def screenshot(self, name: str) -> Path:
        return screenshot(self.driver, name)


def connected(page: Page, user_id: int, nickname: str, room: int) -> None:
    page.connect(user_id, nickname)
    page.until_text("status", "connected")
    page.join(room)
    page.until_text("room-name", str(room))


# -- the scenarios ------------------------------------------------------------------------------


def test_two_pages_chat_and_play_a_game_to_the_end(
    start_server: Any, browser: Callable[..., Page]
) -> None:
    _server, url = start_server("--round-limit", "2")
    ann = browser(url)
    bob = browser(url)

    connected(ann, 1, "ann", 5)
    ann.until_text("user-count", "1")
    connected(bob, 2, "bob", 5)
    # Each sees the other: ann through UserJoinedRoom, bob from the count (and later the game).
    ann.until_text("user-count", "2")
    ann.until_text("members", "bob (2)")
    bob.until_text("user-count", "2")

    # Chat both ways; both see both lines, in the same order. (A chat carries the sender's
    # id, not the nickname: bob, who joined after ann, learns her name when the game starts.)
    ann.say("hello from ann")
    bob.until_line("chat-log", "(1): hello from ann")
    bob.until_text("members", "(1)")  # bob knows ann is here now
    bob.say("hi ann, bob here")
    ann.until_line("chat-log", "bob (2): hi ann, bob here")
    for page in (ann, bob):
        chats = [
            line.split(": ", 1)[1] for line in page.lines("chat-log") if not line.startswith("*")
        ]
        assert chats == ["hello from ann", "hi ann, bob here"], chats

    # ann starts (the starter is ready); bob readies: the game is on, ann's turn, round 1.
    ann.click("start-btn")
    for page in (ann, bob):
        page.until_text("game-status", "Waiting")
    bob.click("ready-btn")
    for page in (ann, bob):
        page.until_text("game-status", "InProgress")
        page.until_text("round", "1")
        page.until_text("turn", "ann (1)")
    ann.until("ann's 'your turn'", lambda: ann.el("your-turn").is_displayed())
    assert not bob.el("move-btn").is_enabled(), "not bob's turn: his actions are disabled"

    # Round 1: ann moves, bob attacks ann for 3.
    ann.fill("move-x", 1.5)
    ann.fill("move-y", 2)
    ann.click("move-btn")
    for page in (ann, bob):
        page.until_line("chat-log", "ann (1) moves to (1.5, 2)")
        page.until_text("turn", "bob (2)")
    bob.fill("attack-damage", 3)
    bob.click("attack-btn")
    for page in (ann, bob):
        page.until_line("chat-log", "bob (2) attacks ann (1) for 3")
        page.until_text("round", "2")
        page.until_text("turn", "ann (1)")
    ann.until_text("players", "-3")
    ann.until("ann's 'your turn'", lambda: ann.el("your-turn").is_displayed())
    ann.screenshot("play-page-in-game.png")  # the one in docs/play-page.png

    # Round 2 (the last): ann uses an item, bob moves: the game ends, bob wins (0 > -3).
    ann.fill("item-id", "potion")
    ann.click("use-btn")
    bob.until_text("turn", "bob (2)")
    bob.click("move-btn")
    for page in (ann, bob):
        page.until_text("game-status", "Finished")
        page.until_text("game-result", "Winner: bob (2)")
        page.until_text("game-result", "ann (1) -3")
        assert page.lines("errors") == [], page.lines("errors")
    ann.until("Start to be enabled again", lambda: ann.el("start-btn").is_enabled())
    ann.screenshot("play-page-game-over.png")


def test_the_page_shows_the_errors_it_receives(
    start_server: Any, browser: Callable[..., Page]
) -> None:
    _server, url = start_server()
    page = browser(url)
    page.connect(3, "cat")
    page.until_text("status", "connected")

    page.join(0)  # room ids are 1..1,000,000
    page.until_line("errors", "422")
    (line,) = page.lines("errors")
    assert line.startswith("422 ") and line.endswith("(RoomJoin)"), line
    assert page.el("last-error").is_displayed() and page.text("last-error") == line
    assert page.text("room-name") == "—"

    # A refused request does not stall the ones after it: join a real room, then a game
    # alone is refused (409) and shown too.
    page.join(9)
    page.until_text("room-name", "9")
    page.click("start-btn")
    page.until_line("errors", "409")
    assert page.lines("errors")[-1].endswith("(StartGame)"), page.lines("errors")
    page.screenshot("play-page-errors.png")


def test_a_tcp_client_and_a_browser_share_a_room(
    start_server: Any, browser: Callable[..., Page]
) -> None:
    """Mixed: a raw TCP client and a page chat both ways and play a game to its end."""
    server, url = start_server("--round-limit", "1")
    page = browser(url)
    connected(page, 10, "webby", 7)

    tcp = server.client(11)
    try:
        assert tcp.join(7, "tcpy") == {"RoomJoinSuccess": {"room_id": 7, "user_count": 2}}
        page.until_text("members", "tcpy (11)")
        page.until_text("user-count", "2")

        page.say("from the browser")
        assert tcp.recv() == {
            "ChatMessage": {"user_id": 10, "room_id": 7, "message": "from the browser"}
        }
        tcp.chat(7, "from tcp")
        page.until_line("chat-log", "tcpy (11): from tcp")
        assert tcp.recv()["ChatMessage"]["message"] == "from tcp"  # its own echo

        # A game, browser against TCP: the page starts, TCP readies, each plays a turn.
        page.click("start-btn")
        assert [p["user_id"] for p in tcp.until("GameStarted")[0]["players"]] == [10, 11]
        tcp.send({"ToggleReady": {"room_id": 7}})
        assert tcp.until("GameInProgress")[0] == {"room_id": 7, "current_turn": 10, "round": 1}
        page.until_text("turn", "webby (10)")
        page.fill("move-x", 3)
        page.click("move-btn")
        moved = tcp.until("ActionResult")[0]
        assert moved["action"] == {"Move": {"x": 3.0, "y": 0.0, "direction": 0.0}}, moved
        page.until_text("turn", "tcpy (11)")
        tcp.send(
            {"PlayerAction": {"room_id": 7, "action": {"Attack": {"target_id": 10, "damage": 5}}}}
        )
        ended = tcp.until("GameEnded")[0]
        assert ended["winner"]["user_id"] == 11, ended
        page.until_line("chat-log", "tcpy (11) attacks webby (10) for 5")
        page.until_text("game-result", "Winner: tcpy (11)")
        page.until_text("game-result", "webby (10) -5")
    finally:
        tcp.close()
    page.until_text("user-count", "1")
    page.until_line("chat-log", "tcpy (11) left")


def test_auth_token_from_the_page(
    start_server: Any, browser: Callable[..., Page], tmp_path: Path
) -> None:
    secret = tmp_path / "auth.secret"
    secret.write_bytes(b"s" * 32)
    _server, url = start_server("--auth-secret-file", str(secret))
    good = gamed_token.mint(secret.read_bytes(), 21, int(time.time()) + 600)

    page = browser(url)
    page.connect(21, "tok", token="not-a-token")
    page.until_line("errors", "401")
    page.until("the refused session to be closed", lambda: page.text("status") == "closed")

    page.connect(21, "tok", token=good)
    page.until_text("status", "connected")
    page.join(4)
    page.until_text("room-name", "4")


def test_phone_sized_page(start_server: Any, browser: Callable[..., Page]) -> None:
    """The page fits a phone: one column, nothing wider than the screen."""
    _server, url = start_server()
    page = browser(url, width=390, height=844, phone=True)
    connected(page, 30, "phone", 2)
    page.say("from a phone")
    page.until_line("chat-log", "from a phone")
    overflow = page.driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    page.screenshot("play-page-phone.png")


def test_a_dropped_or_reloaded_page_keeps_its_seat(
    start_server: Any, browser: Callable[..., Page]
) -> None:
    """gamed.js reopens a socket that closed under it, sends Connect again, and gets its
    seat in the running game back (the server's reconnect grace)."""
    _server, url = start_server()
    ann = browser(url)
    bob = browser(url)
    connected(ann, 41, "ann", 6)
    connected(bob, 42, "bob", 6)
    ann.until_text("user-count", "2")
    ann.click("start-btn")
    bob.until_text("game-status", "Waiting")
    bob.click("ready-btn")
    ann.until_text("turn", "ann (41)")

    # The socket drops under the page (as a network drop would): no close() by the page.
    ann.driver.execute_script("window.gamed._ws.close(4001, 'test: drop')")
    # (The room hears "away" first if the server saw the close before the new Connect;
    # either way the seat is kept.)
    ann.until_line("chat-log", "reconnecting in")
    ann.until_line("chat-log", "* reconnected")
    ann.until_text("status", "connected")
    bob.until_line("chat-log", "is back")
    ann.until_text("room-name", "6")
    ann.until_text("turn", "ann (41)")
    ann.click("move-btn")  # still ann's turn, still her seat
    bob.until_text("turn", "bob (42)")
    ann.say("back again")
    bob.until_line("chat-log", "(41): back again")
    assert ann.lines("errors") == [], ann.lines("errors")

    # A reload: the tab connects again by itself (its session is kept per tab) and gets the
    # seat and the game's state back.
    ann.driver.refresh()
    ann = Page(ann.driver)
    ann.until_text("status", "connected")
    bob.until(
        "ann back a second time",
        lambda: sum("is back" in line for line in bob.lines("chat-log")) == 2,
    )
    ann.until_text("room-name", "6")
    ann.until_text("game-status", "InProgress")
    ann.until_text("turn", "bob (42)")
    bob.click("move-btn")
    ann.until_text("round", "2")
    ann.until_text("turn", "ann (41)")
    ann.click("move-btn")
    bob.until_text("turn", "bob (42)")
    assert ann.lines("errors") == [], ann.lines("errors")


def test_the_example_in_docs_clients_md_runs(
    start_server: Any, browser: Callable[..., Page]
) -> None:
    """The ten-line gamed.js example of docs/clients.md, as written, in a page of the server."""
    doc = (ROOT / "docs" / "clients.md").read_text()
    found = re.search(r'```html\n<script type="module">\n(.*?)</script>\n```', doc, re.S)
    assert found, "no gamed.js example in docs/clients.md"
    code = found.group(1).replace(
        'import { GamedClient } from "/gamed.js";',
        'const { GamedClient } = await import("/gamed.js");',
    )
    assert "await import" in code
    _server, url = start_server()
    page = browser(url)
    logs = page.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const logs = [];"
        "const console = {log: (...a) => logs.push(a.join(' ')),"
        "                 warn: (...a) => logs.push('warn ' + a.join(' '))};"
        f"(async () => {{ {code} }})().then(() => done(logs), (e) => done([...logs, 'failed ' + e]));"
    )
    assert logs == ["in room 5 with 0 others", "7: hello"], logs


def test_the_page_comes_back_after_a_server_restart(
    gamed: Any, start_server: Any, browser: Callable[..., Page]
) -> None:
    """SIGTERM: the page hears the shutdown, its socket closes (1001), gamed.js retries with
    backoff while nothing listens, and reconnects and rejoins its room on the new server."""
    server, url = start_server("--shutdown-grace", "1")
    page = browser(url)
    connected(page, 50, "phoenix", 3)
    port = server.ws_port
    server.stop()
    page.until_line("chat-log", "server is shutting down")
    page.until_line("chat-log", "reconnecting in")
    again = gamed("--ws-port", f"tcp:{port}:interface=127.0.0.1")
    assert again.ws_port == port
    page.until_line("chat-log", "* reconnected")
    page.until_text("status", "connected")
    joined = "* you joined room 3 (1 user)"
    page.until("the rejoin", lambda: page.lines("chat-log").count(joined) == 2)
    page.until_text("room-name", "3")
    page.say("still here")
    page.until_line("chat-log", "phoenix (50): still here")
    assert page.lines("errors") == [], page.lines("errors")


# gamed.js against a scripted fake socket, in the browser: the reply matching, time-outs,
# backoff and the no-reconnect cases, which a real server does not produce on demand.
GAMED_JS_UNIT = r"""
const done = arguments[arguments.length - 1];
(async () => {
  const { GamedClient } = await import("/gamed.js");
  const sockets = [];
  class FakeSocket {
    constructor(url) { this.url = url; this.readyState = 0; this.sent = []; sockets.push(this);
                       setTimeout(() => { this.readyState = 1; this.onopen && this.onopen(); }, 0); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close(code) { this.readyState = 3; setTimeout(() => this.onclose && this.onclose({ code, reason: "" }), 0); }
    reply(obj) { this.onmessage({ data: JSON.stringify(obj) }); }
    drop(code) { this.readyState = 3; this.onclose({ code, reason: "" }); }
  }
  const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
  const opened = async (n) => {  // the n-th socket (0-based) is open: at most 5 s
    for (let t = 0; t < 500 && !(sockets[n] && sockets[n].readyState === 1); t++) await tick(10);
    if (!(sockets[n] && sockets[n].readyState === 1)) throw new Error(`socket ${n} never opened`);
    return sockets[n];
  };
  const outcome = (p) => p.then((v) => ["ok", v], (e) => [e.kind, e.code, e.request]);
  const results = {};
  const c = new GamedClient("ws://fake/ws", { WebSocket: FakeSocket, heartbeatMs: 0,
    requestTimeoutMs: 300, initialDelayMs: 40, maxDelayMs: 100 });
  const delays = [];
  c.on("reconnecting", ({ delayMs }) => delays.push(delayMs));

  const ack = c.connect({ userId: 7, nickname: "neo", token: "tok" });
  await tick();
  const ws = sockets[0];
  results.connect_sent = ws.sent[0];
  ws.reply({ ConnectionAck: { user_id: 7 } });
  results.connect = await outcome(ack);

  // An Error answers the oldest request; the next one still gets its own reply.
  const chat = outcome(c.chat("hi", 5));
  const join = outcome(c.joinRoom(5));
  ws.reply({ Error: { code: 404, message: "not in room 5" } });
  ws.reply({ UserJoinedRoom: { room_id: 5, user_id: 8, nickname: "x", user_count: 2 } });
  ws.reply({ RoomJoinSuccess: { room_id: 5, user_count: 2 } });
  results.chat_then_join = [await chat, await join];

  // Another member's chat and GameStarted do not settle ours.
  const mine = outcome(c.chat("mine"));
  ws.reply({ ChatMessage: { user_id: 8, room_id: 5, message: "other" } });
  ws.reply({ ChatMessage: { user_id: 7, room_id: 5, message: "mine" } });
  results.own_chat = await mine;
  const start = outcome(c.startGame());
  ws.reply({ GameStarted: { room_id: 5, players: [{ user_id: 8, ready: true }, { user_id: 7, ready: false }] } });
  ws.reply({ Error: { code: 409, message: "a game is already waiting in room 5" } });
  results.start_race = await start;

  // A reply to a later request: the earlier one got none.
  const hb = outcome(c.heartbeat());
  const leave = outcome(c.leaveRoom());
  ws.reply({ RoomLeaveSuccess: { room_id: 5, user_count: 1 } });
  results.no_reply = [await hb, await leave];
  results.room_after_leave = c.roomId;

  // No answer: a time-out, and the queue moves on.
  results.timeout = await outcome(c.joinRoom(6));
  const join7 = outcome(c.joinRoom(7));
  ws.reply({ RoomJoinSuccess: { room_id: 7, user_count: 1 } });
  results.after_timeout = await join7;

  // A drop: waiting requests fail, the client reconnects with Connect then RoomJoin.
  const lost = outcome(c.chat("lost"));
  ws.drop(1006);
  results.lost = await lost;
  const ws2 = await opened(1);
  results.resent = ws2.sent.slice();
  ws2.reply({ ConnectionAck: { user_id: 7 } });
  await tick();
  results.rejoin = ws2.sent.slice(1);
  ws2.reply({ RoomJoinSuccess: { room_id: 7, user_count: 1 } });

  // Backoff grows (with jitter) and is capped; it resets after an ack.
  for (let i = 0; i < 4; i++) { const n = sockets.length; sockets[n - 1].drop(1006); await opened(n); }
  results.delays = delays.slice();

  // A takeover stops the reconnects.
  const last = sockets[sockets.length - 1];
  last.reply({ ConnectionAck: { user_id: 7 } });
  await tick();
  const before = sockets.length;
  last.reply({ Error: { code: 409, message: "replaced by a new connection" } });
  last.drop(1006);  // even a close that would be retried
  const state = c.state;  // no retry scheduled: "closed" at once
  await tick(200);  // (twice maxDelayMs: a retry would have opened a socket by now)
  results.after_takeover = [sockets.length - before, state];
  return results;
})().then(done, (e) => done({ failed: String(e && e.stack || e) }));
"""


def test_gamed_js_matches_replies_and_reconnects(
    start_server: Any, browser: Callable[..., Page]
) -> None:
    _server, url = start_server()
    page = browser(url)
    r = page.driver.execute_async_script(GAMED_JS_UNIT)
    assert "failed" not in r, r.get("failed")
    assert r["connect_sent"] == {
        "Connect": {"room_id": 0, "user_id": 7, "token": "tok", "nickname": "neo"}
    }
    assert r["connect"] == ["ok", {"user_id": 7}]
    assert r["chat_then_join"] == [
        ["server", 404, "ChatMessage"],
        ["ok", {"room_id": 5, "user_count": 2}],
    ]
    assert r["own_chat"] == ["ok", {"user_id": 7, "room_id": 5, "message": "mine"}]
    assert r["start_race"] == ["server", 409, "StartGame"]
    assert r["no_reply"] == [
        ["no-reply", 0, "HeartBeat"],
        ["ok", {"room_id": 5, "user_count": 1}],
    ]
    assert r["room_after_leave"] is None
    assert r["timeout"] == ["timeout", 0, "RoomJoin"]
    assert r["after_timeout"] == ["ok", {"room_id": 7, "user_count": 1}]
    assert r["lost"] == ["closed", 0, "ChatMessage"]
    assert r["resent"] == [
        {"Connect": {"room_id": 0, "user_id": 7, "token": "tok", "nickname": "neo"}}
    ]
    assert r["rejoin"] == [{"RoomJoin": {"user_id": 7, "room_id": 7, "nickname": "neo"}}]
    delays = r["delays"]
    assert len(delays) == 5, delays
    assert 20 <= delays[0] <= 40, delays  # initialDelayMs 40, half of it jitter
    assert 20 <= delays[1] <= 40, delays  # the ack in between reset the attempts
    assert 40 <= delays[2] <= 80 and 50 <= delays[3] <= 100 and 50 <= delays[4] <= 100, delays
    assert r["after_takeover"] == [0, "closed"]
