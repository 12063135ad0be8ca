"""Path ids on the HTTP port (issue 12 item 7): every id goes through httputil.path_id, so
an id of 5,000 digits (over Python's int-from-string limit) is a 400, never a 500 and a
traceback, on every endpoint that takes one. No sockets: the real site on DummyRequest."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from gamed.httputil import path_id
from tests.unit.fakes import memory_service

TOKEN = b"admin-token-0123456789"
HUGE = b"9" * 5000


@pytest.mark.parametrize(
    "segment",
    [HUGE, b"1" * 21, b"", b"+1", b"-1", b" 1", b"1_0", b"1.0", b"0x1", "\u0661".encode()],
)
def test_path_id_refuses_what_is_not_a_plain_bounded_number(segment: bytes) -> None:
    assert path_id(segment, 0, 2**64) is None


def test_path_id_bounds_and_leading_zeros() -> None:
    assert path_id(b"007", 1, 10) == 7
    assert path_id(b"0", 1, 10) is None
    assert path_id(b"11", 1, 10) is None
    assert path_id(b"18446744073709551615", 0, 2**64) == 2**64 - 1


class Site:
    def __init__(self, tmp_path: Path) -> None:
        token = tmp_path / "admin.token"
        token.write_bytes(TOKEN + b"\n")
        service, _ = memory_service(tmp_path, "--admin-token-file", str(token))
        self.site = service.getServiceNamed("http-listener").factory

    def get(self, path: bytes) -> tuple[int, object]:
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        request.requestHeaders.addRawHeader(b"authorization", b"Bearer " + TOKEN)
        body = self.site.getResourceFor(request).render(request)
        assert body is not NOT_DONE_YET
        return request.responseCode or 200, orjson.loads(body)


@pytest.mark.parametrize(
    "path",
    [
        b"/stats/rooms/" + HUGE,
        b"/stats/rooms/" + b"1" * 30,
        b"/stats/rooms/0",
        b"/analytics/users/" + HUGE,
        b"/analytics/rooms/" + HUGE,
        b"/admin/users/" + HUGE,
        b"/admin/users/" + HUGE + b"/ban",
    ],
)
def test_every_path_id_is_validated(tmp_path: Path, path: bytes) -> None:
    code, body = Site(tmp_path).get(path)
    assert code == 400, body
    assert "id" in body["error"]  # type: ignore[index]
    assert len(body["error"]) < 200  # type: ignore[index]  # the id is not echoed whole


def test_a_room_id_in_range_that_does_not_exist_is_404(tmp_path: Path) -> None:
    assert Site(tmp_path).get(b"/stats/rooms/42")[0] == 404
