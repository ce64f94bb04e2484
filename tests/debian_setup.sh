#!/usr/bin/env bash
# Debian packages that the integration tests run for real (chromium + chromedriver for the browser
# test, caddy and prometheus for the TLS door and monitoring, haproxy for failover): installs those of
# the named packages that are missing. Idempotent; needs root (CI runs as root). The packages' own
# services are not used: the tests start the binaries on loopback themselves.
#   usage: tests/debian_setup.sh PACKAGE...
set -euo pipefail

missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    echo "debian_setup: $* installed"
    exit 0
fi
if [[ "$(id -u)" != "0" ]]; then
    echo "debian_setup: ${missing[*]} missing and not root: run" \
         "'sudo apt-get update && sudo apt-get install -y ${missing[*]}'" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
