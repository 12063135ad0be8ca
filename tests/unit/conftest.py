"""Fixtures shared by the unit tests (fakes and builders are in tests/unit/fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every log line emitted during the test, formatted."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)
