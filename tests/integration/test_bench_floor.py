"""gamed-bench against the real floor server (``python -m gamed.bench.floor``) over 127.0.0.1.

Only counts are asserted, never speeds: this checks the load generator works end to end.
Commands run from a temporary directory, as they would from an installed wheel: nothing
may depend on the checkout's layout.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gamed.bench.scenarios import BenchConfig, run, run_users


def _start_floor(
    tmp_path_factory: pytest.TempPathFactory, *extra: str
) -> Iterator[tuple[int, int]]:
    out = tmp_path_factory.mktemp("floor") / "floor.out"
    argv = [sys.executable, "-m", "gamed.bench.floor", "--port", "0", "--json", "orjson", *extra]
    with open(out, "wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=out.parent,
        )
    try:
        port = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            text = out.read_text()
            if text.startswith("PORT "):
                port = int(text.split()[1])
                break
            time.sleep(0.05)
        assert port, f"floor did not start: {out.read_text()[-500:]}"
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(port, pid) of a floor server on a free port; killed afterwards."""
    yield from _start_floor(tmp_path_factory)


@pytest.fixture(scope="module")
def floor_turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """The same floor writing through gamed's TurnWriter (the suite's ``floor-turn``)."""
    yield from _start_floor(tmp_path_factory, "--turn-write")


def test_the_turn_writing_floor_delivers_every_chat_and_survives_churn(
    floor_turn: tuple[int, int],
) -> None:
    port, pid = floor_turn
    cfg = BenchConfig(
        scenario="fanout", port=port, rooms=2, members=3, warmup=0.2, duration=1.0, server_pid=pid
    )
    res = run(cfg)
    assert res["ok"] and res["errors"] == 0, res
    assert res["metrics"]["echo_count"] > 0
    assert res["metrics"]["fanout"] == pytest.approx(3, abs=0.5)
    churn = BenchConfig(
        scenario="churn", port=port, workers=2, rooms=1, warmup=0.1, duration=0.5,
        user_id_base=6_000_000, room_id_base=500,
    )  # fmt: skip
    res = run(churn)
    assert res["metrics"]["cycles"] > 0 and res["errors"] == 0, res


def test_fanout_closed_loop(floor: tuple[int, int]) -> None:
    port, pid = floor
    cfg = BenchConfig(
        scenario="fanout", port=port, rooms=2, members=3, warmup=0.2, duration=1.0, server_pid=pid
    )
    res = run(cfg)
    m = res["metrics"]
    assert res["ok"], res
    assert m["clients"] == 6
    assert m["deliveries_per_s"] > 0
    assert m["echo_count"] > 0
    assert m["fanout"] == pytest.approx(3, abs=0.5)  # each chat reaches the 3 members
    assert m["server_cpu_us_per_delivery"] > 0
    assert res["errors"] == 0
    assert res["connect_failures"] == 0


def test_fanout_open_loop(floor: tuple[int, int]) -> None:
    port, _ = floor
    cfg = BenchConfig(
        scenario="fanout", port=port, rooms=2, members=3, rate=20, warmup=0.2, duration=1.0,
        user_id_base=2_000_000, room_id_base=100,
    )  # fmt: skip
    res = run(cfg)
    assert res["metrics"]["deliveries_per_s"] > 0
    assert res["errors"] == 0


def test_idle_reports_server_rss(floor: tuple[int, int]) -> None:
    port, pid = floor
    cfg = BenchConfig(
        scenario="idle", port=port, connections=20, rooms=4, duration=0.3, server_pid=pid,
        user_id_base=3_000_000, room_id_base=200,
    )  # fmt: skip
    res = run(cfg)
    assert res["metrics"]["connections"] == 20
    assert res["metrics"]["rss_after_kib"] > 0
    assert res["errors"] == 0


def test_games_unsupported_is_reported_not_hung(floor: tuple[int, int]) -> None:
    port, _ = floor
    cfg = BenchConfig(
        scenario="games", port=port, games=3, duration=5.0, user_id_base=4_000_000,
        room_id_base=300,
    )  # fmt: skip
    res = run(cfg)
    assert res["metrics"]["games_completed"] == 0
    assert res["error_codes"] == {"404": 3}
    # the errors end the games at once: none is left to the play timeout
    assert not any("not finished" in n for n in res["notes"]), res["notes"]


def test_churn(floor: tuple[int, int]) -> None:
    port, _ = floor
    cfg = BenchConfig(
        scenario="churn", port=port, workers=2, rooms=1, warmup=0.1, duration=0.5,
        user_id_base=5_000_000, room_id_base=400,
    )  # fmt: skip
    res = run(cfg)
    assert res["metrics"]["cycles"] > 0
    assert res["errors"] == 0 and res["connect_failures"] == 0


def test_users_sign_on_and_leave(floor: tuple[int, int]) -> None:
    port, pid = floor
    cfg = BenchConfig(
        scenario="users", port=port, users=200, workers=4, settle=0.0, server_pid=pid,
        user_id_base=6_000_000,
    )  # fmt: skip
    res = run(cfg)
    m = res["metrics"]
    assert res["ok"], res
    assert m["users"] == 200
    assert m["rss_before_kib"] > 0 and m["rss_growth_kib"] is not None
    assert res["errors"] == 0 and res["connect_failures"] == 0


def test_users_against_several_servers_share_the_settle_waits(floor: tuple[int, int]) -> None:
    port, pid = floor
    cfgs = [
        BenchConfig(
            scenario="users",
            port=port,
            users=100,
            workers=4,
            settle=0.2,
            server_pid=pid,
            user_id_base=base,
        )
        for base in (7_000_000, 7_001_000)
    ]
    results = run_users(cfgs)
    assert [r["metrics"]["users"] for r in results] == [100, 100]
    assert all(r["ok"] and r["errors"] == 0 for r in results)
    assert results[0]["params"]["servers_together"] == 2


def test_connection_refused_gives_exit_status_2(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "gamed.bench", "fanout", "--port", str(port), "--rooms", "1",
         "--members", "2", "--warmup", "0", "--duration", "0.5", "--json", "--out", "r.json"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.count("\n") == 1 and '"connect_failures":2' in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["connect_failures"] == 2


def test_suite_starts_the_floor_by_module_and_writes_out_in_the_working_dir(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gamed.bench.suite", "--quick", "--targets", "floor-orjson",
         "--scenarios", "churn", "--out", "res/bench.json"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "churn 20 workers | cycles/s" in proc.stdout
    doc = json.loads((tmp_path / "res" / "bench.json").read_text())
    assert doc["targets"]["floor-orjson"]["argv"][1:3] == ["-m", "gamed.bench.floor"]
    assert doc["medians"]["floor-orjson"]["churn 20 workers"]["errors"] == 0
