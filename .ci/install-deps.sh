#!/usr/bin/env bash
# Installs the Debian packages listed in .ci/debian-packages.txt that are missing.
# Called by `make test` (and so by .ci/run); safe to run again: with everything
# installed it only asks dpkg and says so. Not root: uses sudo. Cannot install
# (no apt-get, no sudo, sudo refused): says what to install and exits 1.
# Debian's prometheus package may start a system prometheus on 9090 where systemd
# runs; the tests never use it (they start their own on a free port).
set -euo pipefail
cd "$(dirname "$0")"

mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' debian-packages.txt)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: not a Debian system (no dpkg-query/apt-get): install these yourself if" \
         "the tests need them: ${packages[*]}" >&2
    exit 0
fi

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: Debian packages present: ${packages[*]}"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-deps: missing Debian packages: ${missing[*]}; not root and no sudo." >&2
        echo "install-deps: as root, run: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    SUDO=(sudo)
    # Non-interactive sudo unless someone is at a terminal to type a password.
    [ -t 0 ] || SUDO+=(-n)
fi

echo "install-deps: installing ${missing[*]} with ${SUDO[*]:-root} apt-get"
# env, not export: sudo would drop an exported variable.
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=300 ||
   ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}"; then
    echo "install-deps: could not install ${missing[*]}; as root, run:" \
         "apt-get update && apt-get install ${missing[*]}" >&2
    exit 1
fi
for p in "${missing[@]}"; do
    installed "$p" || { echo "install-deps: $p still not installed" >&2; exit 1; }
done
echo "install-deps: installed ${missing[*]}"
