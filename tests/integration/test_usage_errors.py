"""A usage error under a real twistd: the line that names the option comes first."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gamed import tap
from tests.integration.helpers import TWISTD


@pytest.mark.parametrize(
    ("args", "first"),
    [
        (["--max-connections", "x"], "twistd gamed: --max-connections: "),
        (["--port", "carrier-pigeon:1"], "twistd gamed: --port: "),
        (["--bogus"], "twistd gamed: option --bogus not recognized"),
    ],
)
def test_the_first_line_names_the_option(tmp_path: Path, args: list[str], first: str) -> None:
    r = subprocess.run(
        [TWISTD, "gamed", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert r.stdout == "", "no option list"
    lines = r.stderr.splitlines()
    assert lines[0].startswith(first), r.stderr
    assert lines[1:] == ["twistd gamed: 'twistd gamed --help' lists the options"]


def test_help_still_lists_every_option(tmp_path: Path) -> None:
    r = subprocess.run(
        [TWISTD, "gamed", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0
    assert "--max-connections=" in r.stdout and "--shutdown-grace=" in r.stdout


def test_called_directly_the_usage_error_propagates() -> None:
    from twisted.python import usage

    with pytest.raises(usage.UsageError, match="--max-connections"):
        tap.Options().parseOptions(["--max-connections", "x"])
