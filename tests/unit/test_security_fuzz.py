"""Arbitrary frames through GameProtocol (decoder + security plugin) on a StringTransport.

Whatever a client sends, the server never raises: every frame gets a reply
(an Error among them when refused) or the connection is dropped.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gamed.config import Settings
from gamed.events import EventBus
from gamed.middleware.security.middleware import SecurityMiddleware
from gamed.middleware.security.policy import build_policy
from gamed.pipeline import Pipeline
from gamed.protocol import GameFactory
from gamed.rooms import RoomService
from gamed.router import Router
from gamed.telemetry import ServerMetrics
from tests.unit.fakes import parse_frames

CODES = {400, 401, 403, 404, 409, 413, 422, 429, 500, 503}

u32 = st.one_of(st.integers(0, 5), st.integers(0, 2**32 - 1), st.integers(-10, 2**40))
text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["<script>", "'; DROP table", "eval(", "JavaScript:", "x" * 1001]),
)
anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def variant(name: str, **fields: Any) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({name: st.fixed_dictionaries(fields)})


messages = st.one_of(
    variant("Connect", room_id=u32, user_id=st.integers(1, 4)),
    st.just("HeartBeat"),
    variant("RoomJoin", user_id=st.integers(1, 4), room_id=u32, nickname=text),
    variant("RoomLeave", user_id=st.integers(1, 4), room_id=u32),
    variant("ChatMessage", user_id=st.integers(1, 4), room_id=st.integers(0, 3), message=text),
    variant("StartGame", room_id=u32),
    variant("PlayerAction", room_id=u32, action=anything),
    st.dictionaries(st.text(max_size=12), anything, max_size=2),
    anything,
)
payloads = st.one_of(
    messages.map(orjson.dumps),
    st.binary(max_size=64),
    st.just(b""),
    st.binary(min_size=1, max_size=2000).map(lambda b: b'{"ChatMessage":' + b),
)
steps = st.lists(
    st.tuples(payloads, st.sampled_from([0.0, 0.0001, 0.01, 1.0, 61.0])), min_size=1, max_size=30
)


class Server:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        s = Settings(max_frame_bytes=1024)
        policy = build_policy(
            {
                "allowlist": [],
                "rate_limit_per_minute": 5,
                "ip_rate_limit_per_minute": 20,
                "ip_violations_before_block": 5,
                "max_message_size": 512,
            }
        )
        self.mw = SecurityMiddleware(policy, self.clock, None, CollectorRegistry())
        events = EventBus()
        self.router = Router(
            s,
            self.clock,
            RoomService(self.clock, s.max_room_users, events),
            Pipeline([self.mw]),
            ServerMetrics(),
            events,
        )
        self.factory = GameFactory(self.router, self.clock)

    def connect(self, port: int) -> tuple[Any, StringTransport]:
        t = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", port))
        p = self.factory.buildProtocol(t.getPeer())
        p.makeConnection(t)
        return p, t


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conns=st.lists(steps, min_size=1, max_size=3))
def test_arbitrary_frames_get_a_reply_or_a_close_never_an_exception(conns: list) -> None:
    server = Server()
    for port, script in enumerate(conns, start=40000):
        proto, transport = server.connect(port)
        for payload, pause in script:
            server.clock.advance(pause)
            if transport.disconnecting:
                break
            transport.clear()
            proto.dataReceived(struct.pack(">I", len(payload)) + payload)
            out = parse_frames(transport.value())
            assert out or transport.disconnecting, payload
            for msg in out:
                if isinstance(msg, dict) and "Error" in msg:
                    assert msg["Error"]["code"] in CODES, msg
        assert server.router.pipeline.failures == {}, server.router.pipeline.failures


@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20))
def test_arbitrary_byte_streams_never_raise(chunks: list[bytes]) -> None:
    server = Server()
    proto, transport = server.connect(40000)
    for chunk in chunks:
        proto.dataReceived(chunk)
        server.clock.advance(0.0005)
    assert server.router.pipeline.failures == {}
    if server.router.frames_refused["oversize"]:
        assert transport.disconnecting  # a lying length prefix ends the connection
