"""A command-line client for humans and shell scripts (``gamed-client``).

Interactive use::

    gamed-client --user-id 7 --nickname neo --room 5
    hello everyone            <- plain text is a chat in the current room
    /help                     <- the list of commands

Scripting use (join, chat, print what arrives for a while, exit 0)::

    gamed-client --user-id 7 --room 5 --say hello --say bye --wait 2

Design: the network side runs on the Twisted reactor (``Int32StringReceiver``
does the length-prefix framing, including frames split or merged across TCP
chunks). Standard input is read by a daemon thread with ``os.read`` and handed
to the reactor with ``callFromThread``: Twisted's ``StandardIO`` would put the
terminal into non-blocking mode and fight with ``print``. All protocol logic
lives in ``Session``, which only sees a clock and callbacks, so it is unit
tested without sockets or sleeps.

Exit status: 0 after ``/quit``, end of input or a finished ``--say`` run;
1 when the server cannot be reached, does not acknowledge ``Connect``, refuses
the ``--room`` join of a ``--say`` run, or closes the connection; 2 for bad
command-line arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from twisted.internet import protocol
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from gamed import codec
from gamed import messages as m

HEARTBEAT_SECONDS = 10.0
#: Server frames are bounded by the server; this only guards against garbage.
MAX_FRAME_BYTES = 16 * 1024 * 1024

HELP = """\
commands:
  TEXT                  chat in the current room (start with // to send a leading /)
  /join ROOM [NICK]     join ROOM (leaving the current one), optionally as NICK
  /leave                leave the current room
  /start                start a game in the current room
  /ready                toggle ready in the current room's game
  /move X Y DIR         game action: move to (X, Y) facing DIR
  /attack TARGET DMG    game action: attack user TARGET for DMG points
  /use ITEM             game action: use item ITEM
  /hb                   send a heartbeat (one is sent every 10 s anyway)
  /raw JSON             send JSON verbatim as one frame (debugging)
  /help                 this text
  /quit                 disconnect and exit"""


class UsageError(ValueError):
    """A command line the user typed that cannot be turned into a message."""


@dataclass(slots=True)
class RawPayload:
    """A ``/raw`` payload, sent verbatim (not validated: it is for poking the server)."""

    payload: bytes


class Quit:
    """Sentinel returned by ``parse_line`` for ``/quit``."""


class Help:
    """Sentinel returned by ``parse_line`` for ``/help``."""


QUIT = Quit()
HELP_CMD = Help()

Command = Any  # a message object, RawPayload, QUIT, HELP_CMD or None (nothing to do)


@dataclass(slots=True)
class ClientState:
    """What command parsing needs to know: who we are and which room we are in."""

    user_id: int
    nickname: str
    room: int | None = None


# -- command parsing ------------------------------------------------------------------


def _int(word: str, what: str) -> int:
    try:
        return int(word)
    except ValueError:
        raise UsageError(f"{what} must be an integer, got {word!r}") from None


def _float(word: str, what: str) -> float:
    try:
        return float(word)
    except ValueError:
        raise UsageError(f"{what} must be a number, got {word!r}") from None


def _room(state: ClientState) -> int:
    if state.room is None:
        raise UsageError("not in a room (use /join ROOM)")
    return state.room


def parse_line(line: str, state: ClientState) -> Command:
    """Turn one input line into what to send (or do), updating ``state`` for /join and /leave.

    The room is switched as soon as /join is typed, not when the server confirms,
    so that a script piping "/join 5" then "hello" chats in room 5: the server
    handles frames in order, so the join is processed before the chat.
    """
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if not line.startswith("/") or line.startswith("//"):
        text = line[1:] if line.startswith("//") else line
        return m.ChatMessage(state.user_id, _room(state), text)

    cmd, _, rest = line[1:].partition(" ")
    rest = rest.strip()
    args = rest.split()
    cmd = cmd.lower()

    def want(n: int, usage: str) -> None:
        if len(args) != n:
            raise UsageError(f"usage: {usage}")

    if cmd in ("quit", "exit", "q"):
        return QUIT
    if cmd in ("help", "h", "?"):
        return HELP_CMD
    if cmd == "join":
        if len(args) not in (1, 2):
            raise UsageError("usage: /join ROOM [NICK]")
        room = _int(args[0], "ROOM")
        if len(args) == 2:
            state.nickname = args[1]
        state.room = room
        return m.RoomJoin(state.user_id, room, state.nickname)
    if cmd == "leave":
        want(0, "/leave")
        room = _room(state)
        state.room = None
        return m.RoomLeave(state.user_id, room)
    if cmd == "start":
        want(0, "/start")
        return m.StartGame(_room(state))
    if cmd == "ready":
        want(0, "/ready")
        return m.ToggleReady(_room(state))
    if cmd == "move":
        want(3, "/move X Y DIR")
        x, y, d = (_float(a, n) for a, n in zip(args, ("X", "Y", "DIR"), strict=True))
        return m.PlayerAction(_room(state), m.Move(x, y, d))
    if cmd == "attack":
        want(2, "/attack TARGET DAMAGE")
        target, damage = _int(args[0], "TARGET"), _int(args[1], "DAMAGE")
        return m.PlayerAction(_room(state), m.Attack(target, damage))
    if cmd == "use":
        if not rest:
            raise UsageError("usage: /use ITEM")
        return m.PlayerAction(_room(state), m.UseItem(rest))
    if cmd in ("hb", "heartbeat"):
        want(0, "/hb")
        return m.HeartBeat()
    if cmd == "raw":
        if not rest:
            raise UsageError("usage: /raw JSON")
        return RawPayload(rest.encode())
    raise UsageError(f"unknown command /{cmd} (try /help)")


def encode_command(cmd: Command) -> bytes:
    """The wire frame for a message object or ``RawPayload``."""
    if isinstance(cmd, RawPayload):
        return codec.frame_payload(cmd.payload)
    return codec.frame(cmd)


# -- formatting -----------------------------------------------------------------------


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


#: Room membership frames: the verb they print, and whether they name another user.
_MEMBERSHIP = {
    "RoomJoinSuccess": ("joined", False),
    "UserJoinedRoom": ("joined", True),
    "RoomLeaveSuccess": ("left", False),
    "UserLeftRoom": ("left", True),
}


@dataclass
class Formatter:
    """Renders server frames as one readable line, remembering nicknames it has seen.

    Chat frames carry only a user_id, so names are learnt from join/leave notices
    and game player lists.
    """

    user_id: int | None = None
    nicks: dict[int, str] = field(default_factory=dict)

    def who(self, user_id: Any) -> str:
        nick = self.nicks.get(user_id) if isinstance(user_id, int) else None
        return f"{nick}({user_id})" if nick else f"#{user_id}"

    def _learn(self, user_id: Any, nickname: Any) -> None:
        if isinstance(user_id, int) and isinstance(nickname, str) and nickname:
            self.nicks[user_id] = nickname

    def _learn_players(self, players: Any) -> None:
        for p in players if isinstance(players, list) else ():
            if isinstance(p, dict):
                self._learn(p.get("user_id"), p.get("nickname"))

    def _users(self, n: Any) -> str:
        return f"({n} user{'' if n == 1 else 's'})"

    def _action(self, action: Any) -> str:
        if isinstance(action, dict) and len(action) == 1:
            ((tag, a),) = action.items()
            if tag == "Move":
                return f"moves to ({_num(a['x'])}, {_num(a['y'])}) facing {_num(a['direction'])}"
            if tag == "Attack":
                return f"attacks {self.who(a['target_id'])} for {a['damage']}"
            if tag == "UseItem":
                return f"uses {a['item_id']}"
        return f"does {orjson.dumps(action).decode()}"

    def _scores(self, players: Any) -> str:
        return ", ".join(f"{self.who(p['user_id'])}={p['score']}" for p in players)

    def format(self, tag: str, body: Any) -> str:
        """One line for a decoded frame; unknown or odd-shaped frames get ``TAG {json}``."""
        try:
            line = self._format(tag, body)
        except (KeyError, TypeError, ValueError, AttributeError):
            line = None
        if line is None:
            return tag if body is None else f"{tag} {orjson.dumps(body).decode()}"
        return line

    def _format(self, tag: str, b: Any) -> str | None:
        if b is None:
            return None
        if tag == "ConnectionAck":
            self.user_id = b["user_id"]
            return f"* connected as user {b['user_id']}"
        if tag == "HeartBeatResponse":
            return f"* heartbeat ok (server time {b['timestamp']})"
        if tag == "Error":
            return f"! Error {b['code']}: {b['message']}"
        if tag in _MEMBERSHIP:
            # "* joined room 5 (2 users)" for us, "* bob left room 5 (1 user)" for another.
            verb, other = _MEMBERSHIP[tag]
            who = ""
            if other:
                self._learn(b["user_id"], b["nickname"])
                who = f"{self.who(b['user_id'])} "
            return f"* {who}{verb} room {b['room_id']} {self._users(b['user_count'])}"
        if tag == "ChatMessage":
            return f"[room {b['room_id']}] {self.who(b['user_id'])}: {b['message']}"
        if tag == "SystemMessage":
            return f"** {b['message']}"
        if tag == "GameStarted":
            self._learn_players(b["players"])
            names = ", ".join(self.who(p["user_id"]) for p in b["players"])
            return f"* game started in room {b['room_id']}: {names} (type /ready)"
        if tag == "PlayerReadyUpdate":
            state = "ready" if b["ready"] else "not ready"
            return f"* {self.who(b['user_id'])} is {state} in room {b['room_id']}"
        if tag == "GameInProgress":
            turn = b["current_turn"]
            mine = " (your turn)" if turn == self.user_id else ""
            return f"* room {b['room_id']} round {b['round']}: turn of {self.who(turn)}{mine}"
        if tag == "ActionResult":
            players = b["game_state"]["players"]
            self._learn_players(players)
            who, act = self.who(b["user_id"]), self._action(b["action"])
            return f"* [room {b['room_id']}] {who} {act}; scores: {self._scores(players)}"
        if tag == "GameEnded":
            w = b["winner"]
            winner = f"{self.who(w['user_id'])} wins" if w else "no winner"
            scores = ", ".join(f"{self.who(u)}={s}" for u, s in b["final_scores"])
            return f"* game over in room {b['room_id']}: {winner}; final scores: {scores}"
        return None


# -- the session: protocol logic, independent of sockets and stdin ----------------------


@dataclass
class Options:
    """Parsed command-line options (see ``build_parser``)."""

    user_id: int
    host: str = "127.0.0.1"
    port: int = 7000
    nickname: str | None = None
    token: str | None = None
    room: int | None = None
    say: list[str] = field(default_factory=list)
    wait: float = 1.0
    json: bool = False
    timeout: float = 5.0
    heartbeat: float = HEARTBEAT_SECONDS


class Session:
    """One client connection's behaviour: what to send when, what to print, when to exit.

    ``clock`` schedules timers (the reactor, or ``task.Clock`` in tests); ``out``
    prints a line of server output, ``note`` a local notice or usage error,
    ``fatal`` the reason the client is giving up; ``on_stop`` is called once with
    the exit status when the client should end.
    """

    def __init__(
        self,
        opts: Options,
        clock: IReactorTime,
        out: Callable[[str], None],
        note: Callable[[str], None],
        on_stop: Callable[[int], None],
        fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.opts = opts
        self.clock = clock
        self.out = out
        self.note = note
        self.on_stop = on_stop
        self.fatal = fatal or note
        nickname = opts.nickname or f"user{opts.user_id}"
        self.state = ClientState(opts.user_id, nickname)
        self.fmt = Formatter(opts.user_id, {opts.user_id: nickname})
        self.proto: ClientProtocol | None = None
        self.acked = False
        self.exit_code: int | None = None
        self.last_error: str | None = None  # text of the last frame if it was an Error
        self.auto_heartbeats = 0  # unanswered automatic heartbeats (replies not printed)
        self._say_started = False
        self._joining = False
        self._timers: list[Any] = []
        self._heartbeat: LoopingCall | None = None
        #: called once the connection is acknowledged, for interactive stdin reading
        self.on_ready: Callable[[], None] | None = None

    # -- connection events ---------------------------------------------------

    def connected(self, proto: ClientProtocol) -> None:
        """Send Connect first (the server insists) and give the server a deadline to ack."""
        self.proto = proto
        self.send(
            m.Connect(self.opts.room or 0, self.opts.user_id, self.opts.token, self.opts.nickname)
        )
        self._later(self.opts.timeout, self._ack_timeout)

    def _ack_timeout(self) -> None:
        if not self.acked:
            self.fail(f"no ConnectionAck from the server within {self.opts.timeout:g} s")

    def frame_received(self, payload: bytes) -> None:
        """Print one server frame and react to the ones that drive the session."""
        try:
            tag, body = codec.decode_any(payload)
        except (orjson.JSONDecodeError, codec.DecodeError):
            self.last_error = None
            self.out(f"? unreadable frame: {payload[:200]!r}")
            return
        self.last_error = None
        if tag == "HeartBeatResponse" and self.auto_heartbeats > 0:
            self.auto_heartbeats -= 1
            if not self.opts.json:
                return
        line = self.fmt.format(tag, body)
        self.out(payload.decode("utf-8", "replace") if self.opts.json else line)
        if tag == "Error":
            self.last_error = line.removeprefix("! ")
            if self._joining and self.opts.say:
                self._joining = False
                self.fail(f"could not join room {self.opts.room}: {self.last_error}")
        elif tag == "ConnectionAck" and not self.acked:
            self._on_ack()
        elif tag == "RoomJoinSuccess" and isinstance(body, dict):
            self.state.room = body.get("room_id", self.state.room)
            if self._joining and body.get("room_id") == self.opts.room:
                self._joining = False
                if self.opts.say:
                    self._run_say()
        elif tag == "RoomLeaveSuccess" and isinstance(body, dict):
            if self.state.room == body.get("room_id"):
                self.state.room = None

    def _on_ack(self) -> None:
        self.acked = True
        if self.opts.heartbeat > 0:
            self._heartbeat = LoopingCall(self._send_heartbeat)
            self._heartbeat.clock = self.clock
            self._heartbeat.start(self.opts.heartbeat, now=False)
        if self.opts.room is not None:
            self._joining = True
            self.state.room = self.opts.room
            self.send(m.RoomJoin(self.opts.user_id, self.opts.room, self.state.nickname))
        if self.on_ready is not None:
            self.on_ready()

    def _send_heartbeat(self) -> None:
        self.auto_heartbeats += 1
        self.send(m.HeartBeat())

    def _run_say(self) -> None:
        if self._say_started:
            return
        self._say_started = True
        for text in self.opts.say:
            self.send(m.ChatMessage(self.opts.user_id, self.opts.room or 0, text))
        self._later(self.opts.wait, self.stop, 0)

    def connection_lost(self, reason: Failure | None = None) -> None:
        """A close we did not ask for ends the client with status 1 and says why."""
        self._cancel_timers()
        if self.exit_code is not None:  # we were stopping anyway
            self.on_stop(self.exit_code)
            return
        why = f": {self.last_error}" if self.last_error else ""
        self.fatal(f"server closed the connection{why}")
        self._finish(1)

    def interrupted(self) -> None:
        """The reactor is shutting down (Ctrl-C): the close that follows is ours, status 130."""
        if self.exit_code is None:
            self.exit_code = 130
            self._cancel_timers()

    def connection_failed(self, reason: Failure) -> None:
        """TCP connect refused or timed out."""
        msg = reason.getErrorMessage() if reason is not None else "unknown error"
        self.fatal(f"cannot connect to {self.opts.host}:{self.opts.port}: {msg}")
        self._finish(1)

    # -- user input ----------------------------------------------------------

    def handle_line(self, line: str) -> None:
        """One line of user input: send it, or print a local answer."""
        if self.exit_code is not None:
            return
        try:
            cmd = parse_line(line, self.state)
        except UsageError as e:
            self.note(f"! {e}")
            return
        if cmd is None:
            return
        if cmd is QUIT:
            self.stop(0)
        elif cmd is HELP_CMD:
            self.note(HELP)
        else:
            if isinstance(cmd, m.RoomJoin):
                self._joining = False  # a user's own /join is not the --room join
                self.fmt.nicks[cmd.user_id] = cmd.nickname  # "/join ROOM NICK" renames us
            self.send(cmd)

    def input_ended(self) -> None:
        """End of stdin (a pipe ran dry): let replies arrive for ``--wait`` s, then exit 0."""
        if self.exit_code is None:
            self._later(self.opts.wait, self.stop, 0)

    # -- plumbing ------------------------------------------------------------

    def send(self, cmd: Any) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.write(encode_command(cmd))

    def stop(self, code: int = 0) -> None:
        """Close the connection cleanly (pending writes are flushed) and then exit."""
        if self.exit_code is not None:
            return
        self.exit_code = code
        self._cancel_timers()
        proto = self.proto
        if proto is not None and proto.connected and proto.transport is not None:
            proto.transport.loseConnection()  # connection_lost finishes
            self._later(2.0, self.on_stop, code)  # in case the close never completes
        else:
            self.on_stop(code)

    def fail(self, message: str) -> None:
        self.fatal(message)
        self.stop(1)

    def _finish(self, code: int) -> None:
        self.exit_code = code
        self._cancel_timers()
        self.on_stop(code)

    def _later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.clock.callLater(delay, fn, *args))

    def _cancel_timers(self) -> None:
        for t in self._timers:
            if t.active():
                t.cancel()
        self._timers = []
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()


class ClientProtocol(Int32StringReceiver):
    """Framing only: the session does the rest."""

    MAX_LENGTH = MAX_FRAME_BYTES

    def __init__(self, session: Session) -> None:
        self.session = session

    def connectionMade(self) -> None:
        self.session.connected(self)

    def stringReceived(self, string: bytes) -> None:
        self.session.frame_received(string)

    def lengthLimitExceeded(self, length: int) -> None:
        self.session.note(f"! server sent an oversized frame ({length} bytes); disconnecting")
        assert self.transport is not None  # a frame arrived, so the connection is made
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.session.connection_lost(reason)


class ClientFactory(protocol.ClientFactory):
    """Builds the one connection and reports a failed connect."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def buildProtocol(self, addr: Any) -> ClientProtocol:
        return ClientProtocol(self.session)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.session.connection_failed(reason)


# -- command line and process wiring ------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gamed-client",
        description="Talk to a gamed server from the terminal (type /help once connected).",
        epilog="example: gamed-client --user-id 7 --nickname neo --room 5 --say hi --wait 2",
    )
    p.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7000, help="server port (default 7000)")
    p.add_argument("--user-id", type=int, required=True, help="your user id (u32)")
    p.add_argument("--nickname", help="your nickname in rooms (default userN)")
    p.add_argument("--token", help="auth token, when the server has an auth secret")
    p.add_argument("--room", type=int, help="join this room once connected")
    p.add_argument(
        "--say",
        action="append",
        default=[],
        metavar="TEXT",
        help="script mode: send TEXT in --room (repeatable), wait, then exit",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --say, or when stdin ends: how long to keep printing (default 1)",
    )
    p.add_argument("--json", action="store_true", help="print each server frame as raw JSON")
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="limit for connecting and for the ConnectionAck (default 5)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=HEARTBEAT_SECONDS,
        metavar="SECONDS",
        help="automatic heartbeat interval, 0 to disable (default 10)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> Options:
    """Command line -> ``Options``; exits with status 2 on bad arguments, as argparse does."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if not 0 <= a.user_id <= codec.U32_MAX:
        parser.error("--user-id must be 0..4294967295")
    if a.say and a.room is None:
        parser.error("--say needs --room (the room to chat in)")
    if a.wait < 0 or a.timeout <= 0 or a.heartbeat < 0:
        parser.error("--wait and --heartbeat must be >= 0, --timeout > 0")
    return Options(
        user_id=a.user_id,
        host=a.host,
        port=a.port,
        nickname=a.nickname,
        token=a.token,
        room=a.room,
        say=a.say,
        wait=a.wait,
        json=a.json,
        timeout=a.timeout,
        heartbeat=a.heartbeat,
    )


def _print(line: str) -> None:
    print(line, flush=True)


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _read_stdin(session: Session, reactor: Any) -> None:
    """Thread body: raw ``os.read`` (no buffered-reader lock to deadlock at exit), lines out."""
    buf = b""
    fd = sys.stdin.fileno()
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            if buf:
                reactor.callFromThread(session.handle_line, buf.decode("utf-8", "replace"))
            reactor.callFromThread(session.input_ended)
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            reactor.callFromThread(session.handle_line, raw.decode("utf-8", "replace"))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gamed-client``; returns the process exit status."""
    opts = parse_args(argv)
    from twisted.internet import reactor

    # Local notices go to stderr in --json mode, so stdout stays one JSON value a line.
    note = _print_err if opts.json else _print
    status: list[int] = []

    def on_stop(code: int) -> None:
        if not status:
            status.append(code)
            with contextlib.suppress(ReactorNotRunning):
                reactor.stop()

    def fatal(line: str) -> None:
        _print_err(f"gamed-client: {line}")

    session = Session(opts, reactor, _print, note, on_stop, fatal)
    if not opts.say:

        def start_stdin() -> None:
            t = threading.Thread(target=_read_stdin, args=(session, reactor), daemon=True)
            t.start()

        session.on_ready = start_stdin
        note(f"connecting to {opts.host}:{opts.port} as user {opts.user_id} (/help for commands)")
    reactor.addSystemEventTrigger("before", "shutdown", session.interrupted)
    reactor.connectTCP(opts.host, opts.port, ClientFactory(session), timeout=opts.timeout)
    reactor.run()
    return status[0] if status else 130  # stopped before the connection closed: Ctrl-C


if __name__ == "__main__":
    sys.exit(main())
