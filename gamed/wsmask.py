"""RFC 6455 masking with Python's big integers, for autobahn.

autobahn builds a masker object per WebSocket frame; its native one (``autobahn.nvx``,
cffi) allocates a C masker, a C mask buffer and a C copy of the payload for every
frame. For the short frames a game sends that setup is most of the frame's cost
(py-spy, fan-out 50x20 over WebSocket: ~13% of the server's busy samples in
``create_xor_masker`` and ``XorMaskerNvx``). XOR-ing the payload with the repeated
mask as one integer is done in C by CPython and needs no setup: 0.7-0.9 us against
~3 us for frames up to 100 bytes, even at 1 KB; from ``NATIVE_FROM`` bytes on, the
native masker is faster again and is used. ``install`` makes autobahn ask here
(docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

#: Frames this long or longer are unmasked by autobahn's own (native) masker:
#: measured 1,000 bytes 2.8 us here vs 3.1 us native, 64 KiB 179 us vs 7.5 us.
NATIVE_FROM = 1024

_native: Callable[..., Any] | None = None


def unmask(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``mask`` repeated (RFC 6455 section 5.3), in one go."""
    n = len(payload)
    if not n:
        return b""
    if n >= NATIVE_FROM and _native is not None:
        result: bytes = _native(mask, n).process(payload)
        return result
    return _xor(payload, mask)


def _xor(payload: bytes, mask: bytes) -> bytes:
    """The XOR itself: the payload and the repeated mask as two integers."""
    n = len(payload)
    key = (mask * ((n >> 2) + 1))[:n]
    x = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return x.to_bytes(n, "little")


class IntXorMasker:
    """autobahn's masker interface (``pointer``, ``reset``, ``process``) on int XOR."""

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes, length: int | None = None) -> None:
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        n = len(data)
        if not n:
            return b""
        mask = self._mask
        shift = self._ptr & 3
        if shift:  # a frame's payload arriving in pieces: continue where the last ended
            mask = mask[shift:] + mask[:shift]
        self._ptr += n
        return _xor(data, mask)


def create_masker(mask: bytes, length: int | None = None) -> Any:
    """autobahn's ``create_xor_masker``: ours for short frames, autobahn's for long ones."""
    if length is not None and length >= NATIVE_FROM and _native is not None:
        return _native(mask, length)
    return IntXorMasker(mask, length)


def install(protocol_module: ModuleType) -> bool:
    """Make ``autobahn.websocket.protocol`` build ``IntXorMasker``s; False (and nothing
    changed) if that module no longer has the name it looks the factory up by."""
    global _native
    current = getattr(protocol_module, "create_xor_masker", None)
    if current is None:
        return False
    if current is not create_masker:
        _native = current
        protocol_module.create_xor_masker = create_masker  # type: ignore[attr-defined]
    return True
