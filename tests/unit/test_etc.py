"""The shipped example config is valid and documents the defaults it claims."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gamed.config import Settings, build_settings

ETC = Path(__file__).resolve().parents[2] / "etc"


def test_example_config_parses_to_the_embedded_defaults() -> None:
    from_file = build_settings({}, str(ETC / "gamed.toml"))
    defaults = build_settings({})
    for name in Settings.__dataclass_fields__:
        if name in ("config_file", "plugin_config"):
            continue
        assert getattr(from_file, name) == getattr(defaults, name), name


def test_systemd_unit_runs_twistd_in_the_foreground_and_restarts() -> None:
    unit = (ETC / "gamed.service").read_text()
    assert "twistd --nodaemon" in unit
    assert "Restart=always" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit


def test_systemd_install_recipe_creates_the_config_dir_and_the_plugin_cache() -> None:
    lines = [
        line.removeprefix("#").strip()
        for line in (ETC / "gamed.service").read_text().splitlines()
        if line.startswith("#   ")
    ]
    mkdir = next(i for i, line in enumerate(lines) if "install -d" in line and "/etc/gamed" in line)
    copy = next(i for i, line in enumerate(lines) if "gamed.toml /etc/gamed/" in line)
    assert mkdir <= copy, "the config is copied after its directory exists"
    pip = next(i for i, line in enumerate(lines) if "pip install" in line)
    cache = next(i for i, line in enumerate(lines) if "getPlugins(IPlugin)" in line)
    assert pip < cache, "the plugin cache is written after the install, as root"
    enable = next(i for i, line in enumerate(lines) if "systemctl" in line and "enable" in line)
    assert cache < enable


@pytest.mark.parametrize("name", ["haproxy.cfg", "haproxy-cluster.cfg"])
def test_the_haproxy_configs_pass_haproxy_check(name: str) -> None:
    """``haproxy -c``: the shipped configs parse (the cluster one also runs, with real
    nodes, in tests/integration/test_haproxy_cluster.py)."""
    exe = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    assert exe, "haproxy is not installed: run .ci/install-deps.sh (Debian package haproxy)"
    r = subprocess.run(
        [exe, "-c", "-f", str(ETC / name)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Configuration file is valid" in r.stdout + r.stderr
