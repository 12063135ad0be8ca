#!/usr/bin/env bash
# System packages the test suite needs beyond the virtualenv: Prometheus
# (promtool checks etc/*.yml; tests/integration/test_prometheus.py runs a real
# server). Idempotent: does nothing when both commands are already on PATH.
# Debian's package may start a system prometheus on 9090 where systemd runs;
# the tests never use it (they start their own instance on a free port).
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "install-deps: prometheus and promtool already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
# env, not export: sudo would drop an exported variable.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
command -v promtool >/dev/null && command -v prometheus >/dev/null
echo "install-deps: installed $(prometheus --version 2>&1 | head -n 1)"
