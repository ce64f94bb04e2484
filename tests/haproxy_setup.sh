#!/usr/bin/env bash
# HAProxy from Debian's packages for the failover test (tests/test_failover.py). Idempotent:
# installs only when missing. Needs root (CI runs as root). The package's own service is not used:
# the test runs its own haproxy process on loopback ports.
set -euo pipefail

if command -v haproxy >/dev/null 2>&1; then
    echo "haproxy_setup: $(haproxy -v | head -n 1)"
    exit 0
fi
if [[ "$(id -u)" != "0" ]]; then
    echo "haproxy_setup: haproxy missing and not root: run 'sudo apt-get update && sudo apt-get install -y haproxy'" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q haproxy
haproxy -v | head -n 1
