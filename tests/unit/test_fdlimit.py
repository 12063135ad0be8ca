"""gamed.fdlimit: the soft open-file limit raised toward the hard one, as far as needed."""

from __future__ import annotations

import resource

import pytest

from gamed import fdlimit
from gamed.fdlimit import FD_HEADROOM, raise_nofile


class FakeLimits:
    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.soft, self.hard, self.refuse = soft, hard, refuse

    def get(self, which: int) -> tuple[int, int]:
        return self.soft, self.hard

    def set(self, which: int, limits: tuple[int, int]) -> None:
        if self.refuse:
            raise ValueError("not allowed")
        self.soft, self.hard = limits


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> FakeLimits:
    fake = FakeLimits(1024, 4096)
    monkeypatch.setattr(fdlimit.resource, "getrlimit", fake.get)
    monkeypatch.setattr(fdlimit.resource, "setrlimit", fake.set)
    return fake


def test_raised_as_far_as_the_caps_need(limits: FakeLimits) -> None:
    got = raise_nofile(2000)
    assert (got.soft, got.raised_from, got.short) == (2000 + FD_HEADROOM, 1024, False)
    assert limits.soft == 2000 + FD_HEADROOM
    assert got.connection_cap == 2000


def test_raised_to_the_hard_limit_and_still_short(limits: FakeLimits) -> None:
    got = raise_nofile(10_000)
    assert (got.soft, got.short, got.connection_cap) == (4096, True, 4096 - FD_HEADROOM)
    assert "open-file limit 4096 (hard 4096) is below the 10100" in got.warning(10_000)


def test_left_alone_when_enough_or_not_allowed(limits: FakeLimits) -> None:
    assert raise_nofile(500).raised_from is None and limits.soft == 1024
    limits.refuse = True
    got = raise_nofile(3000)
    assert (got.soft, got.short) == (1024, True)


def test_unlimited(limits: FakeLimits) -> None:
    limits.soft = limits.hard = resource.RLIM_INFINITY
    got = raise_nofile(10_000)
    assert not got.short and got.connection_cap == 10_000 + FD_HEADROOM
