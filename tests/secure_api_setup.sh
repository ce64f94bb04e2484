#!/usr/bin/env bash
# Debian's Caddy and Prometheus (with promtool) for tests/test_secure_api.py and
# tests/test_monitoring.py. Idempotent: installs only what is missing. Needs root (CI runs as root).
# The packages' systemd units are not used: the tests run the binaries on loopback themselves.
set -euo pipefail

missing=()
[[ -x /usr/bin/caddy ]] || missing+=(caddy)
[[ -x /usr/bin/prometheus && -x /usr/bin/promtool ]] || missing+=(prometheus)
if ((${#missing[@]} == 0)); then
    echo "secure_api_setup: caddy and prometheus are installed"
    exit 0
fi
if [[ "$(id -u)" != "0" ]]; then
    echo "secure_api_setup: ${missing[*]} missing and not root: run" \
         "'sudo apt-get update && sudo apt-get install -y ${missing[*]}'" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
/usr/bin/caddy version
/usr/bin/promtool --version | head -n1
