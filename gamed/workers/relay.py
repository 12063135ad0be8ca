"""Worker logs into the parent's log: one log for the whole server, daemonized or not.

A worker runs twistd with ``--logger gamed.workers.relay.worker_observer``: its
events go to its stdout as JSON records (Twisted's own format). The parent reads
them (``LogRelay``), marks each with the worker (``[worker-K ...]``), and
publishes it into its own log with the worker's timestamp and level, so
``--logfile``, the journal or stdout get every process's lines in one place.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import (
    ILogObserver,
    LogLevel,
    eventFromJSON,
    globalLogPublisher,
    jsonFileLogObserver,
)

#: A worker line longer than this (no newline in sight) is logged cut short.
MAX_LINE = 256 * 1024


def worker_observer() -> ILogObserver:
    """twistd's ``--logger`` in a worker: JSON records on the stdout the parent reads.

    A copy of fd 1 is taken because twistd points ``sys.stdout`` at the log itself.
    """
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    return jsonFileLogObserver(out)


class LogRelay:
    """Turns one worker's stdout (JSON records) or stderr (text) into events of the parent's log.

    ``on_event`` sees every event first (the supervisor reads a worker's
    readiness from it); ``last_text`` is the last plain-text line, the reason a
    worker that failed to start gives (twistd prints it to stderr).
    """

    def __init__(
        self,
        index: int,
        json_records: bool,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        publish: Callable[[dict[str, Any]], None] = globalLogPublisher,
    ) -> None:
        self.system = f"worker-{index}"
        self.json_records = json_records
        self.on_event = on_event
        self.publish = publish
        self.last_text: str | None = None
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            lines.append(self._buffer[:MAX_LINE] + b"...")
            self._buffer = b""
        for line in lines:
            self._line(line)

    def flush(self) -> None:
        """The last line of a worker that ended without a newline."""
        if self._buffer:
            line, self._buffer = self._buffer, b""
            self._line(line)

    def _line(self, raw: bytes) -> None:
        raw = raw.strip(b"\x1e\r")
        if not raw.strip():
            return
        event: dict[str, Any] | None = None
        if self.json_records:
            try:
                event = eventFromJSON(raw.decode("utf-8", "replace"))
            except ValueError:
                event = None
        if event is None or not isinstance(event, dict):
            text = raw.decode("utf-8", "replace")
            self.last_text = text
            event = {
                "log_format": "{text}",
                "text": text,
                "log_level": LogLevel.warn if not self.json_records else LogLevel.info,
                "log_namespace": "gamed.workers",
                "log_time": time.time(),
            }
        if self.on_event is not None:
            self.on_event(event)
        namespace, level = event.get("log_namespace"), getattr(event.get("log_level"), "name", None)
        if namespace and namespace != "log_legacy" and level:
            origin = f"{namespace}#{level}"  # as the parent's own lines show it
        else:
            origin = event.get("log_system") or "-"
        event["log_system"] = f"{self.system} {origin}"
        self.publish(event)
