"""A `twistd -n gamed` subprocess on 127.0.0.1 for benchmarks and tests.

Both listeners bind port 0 and the bound ports are read back from twistd's
own log lines, so there is no race for a "free" port.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

TWISTD = str(Path(sys.executable).with_name("twistd"))
START_TIMEOUT = 20.0


class GamedServer:
    def __init__(
        self,
        workdir: Path,
        args: list[str] | tuple[str, ...] = (),
        twistd_args: list[str] | tuple[str, ...] = (),
        log_name: str = "gamed.log",
        preexec_fn: Callable[[], object] | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.log_path = workdir / log_name
        self.args = [
            TWISTD,
            *twistd_args,
            "-n",
            "--pidfile",
            "",
            "gamed",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--metrics-port",
            "tcp:0:interface=127.0.0.1",
            "--ws-port",
            "tcp:0:interface=127.0.0.1",
            "--data-dir",
            str(workdir / "data"),
            *args,
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args,
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,  # e.g. a lower RLIMIT_NOFILE for a test
        )
        #: The WebSocket port (the socket at /ws, the play page at /); None: --ws-port none.
        self.ws_port: int | None = None
        self.port, self.http_port = self._wait_for_ports()

    def _last(self, option: str) -> str:
        return [self.args[i + 1] for i, a in enumerate(self.args) if a == option][-1]

    def _wait_for_ports(self) -> tuple[int, int | None]:
        want_http = self._last("--metrics-port").lower() != "none"
        want_ws = self._last("--ws-port").lower() != "none"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log()
            game = re.search(r"GameFactory(?: \(PROXY\))? starting on (\d+)", text)
            http = re.search(r"QuietSite starting on (\d+)", text)
            ws = re.search(r"WebSocketSite(?: \(PROXY\))? starting on (\d+)", text)
            if game and (http or not want_http) and (ws or not want_ws):
                self.ws_port = int(ws.group(1)) if ws else None
                return int(game.group(1)), int(http.group(1)) if http else None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gamed exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gamed did not start in {START_TIMEOUT}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http_get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return r.read()

    @property
    def ws_url(self) -> str:
        """The WebSocket's address (ws://127.0.0.1:PORT/ws)."""
        if self.ws_port is None:
            raise RuntimeError("this server runs with --ws-port none")
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    def stats(self) -> dict[str, Any]:
        return orjson.loads(self.http_get("/stats"))

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status (negative = signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        return self.proc.returncode

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.terminate()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self._log.close()
