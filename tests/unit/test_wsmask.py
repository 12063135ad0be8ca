"""gamed.wsmask: RFC 6455 masking by int XOR, byte for byte what autobahn's masker gives."""

from __future__ import annotations

import os

import pytest
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.xormasker import create_xor_masker

from gamed import wsmask
from gamed.websocket import GameWebSocketFactory
from tests.unit.fakes import Harness


def test_rfc6455_example() -> None:
    # RFC 6455 section 5.7: "Hello", masked with 37 fa 21 3d.
    masked = bytes.fromhex("7f9f4d5158")
    assert wsmask.IntXorMasker(bytes.fromhex("37fa213d")).process(masked) == b"Hello"


@pytest.mark.parametrize("n", [1, 3, 4, 5, 100, 127, 128, 1023])
def test_same_bytes_as_autobahns_masker(n: int) -> None:
    mask, data = os.urandom(4), os.urandom(n)
    ours = wsmask.IntXorMasker(mask)
    assert ours.process(data) == create_xor_masker(mask, n).process(data)
    assert ours.pointer() == n
    ours.reset()
    assert ours.pointer() == 0


def test_a_payload_in_pieces_continues_the_mask() -> None:
    mask, data = os.urandom(4), os.urandom(1001)
    m = wsmask.IntXorMasker(mask)
    pieces = [data[:1], data[1:3], data[3:500], data[500:501], data[501:]]
    out = b"".join(m.process(p) for p in pieces)
    assert out == create_xor_masker(mask, 1001).process(data)
    assert m.process(b"") == b"" and m.pointer() == 1001


def test_long_frames_keep_the_native_masker_and_the_factory_installs_it() -> None:
    h = Harness()
    GameWebSocketFactory(h.router, h.clock)
    assert autobahn_protocol.create_xor_masker is wsmask.create_masker
    assert wsmask.install(autobahn_protocol)  # twice: still ours, native kept
    assert isinstance(wsmask.create_masker(b"abcd", 100), wsmask.IntXorMasker)
    long = wsmask.create_masker(b"abcd", wsmask.NATIVE_FROM)
    assert not isinstance(long, wsmask.IntXorMasker)
    data = os.urandom(wsmask.NATIVE_FROM)
    assert long.process(data) == wsmask.IntXorMasker(b"abcd").process(data)


def test_an_autobahn_without_the_hook_is_left_alone() -> None:
    import types

    assert not wsmask.install(types.ModuleType("not_autobahn"))


@pytest.mark.parametrize("n", [0, 1, 5, 125, 126, 300, 65535])
def test_unmask_in_one_go(n: int) -> None:
    mask, data = os.urandom(4), os.urandom(n)
    assert wsmask.unmask(data, mask) == create_xor_masker(mask, max(n, 1)).process(data)
