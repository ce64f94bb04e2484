#!/usr/bin/env python3
"""musicgen-drain: the Triton pod's preStop hook. Returns when the replica has no generation left.

    musicgen-drain [--delay 20] [--quiet 10] [--timeout 600] [--metrics http://127.0.0.1:8002/metrics]

1. sleeps `--delay` s: the pod is Terminating, so the endpoints drop it and the ingress stops
   sending it new requests meanwhile;
2. polls Triton's metrics until lm_engine's gauge `musicgen_lm_requests_in_flight` (requests queued
   or generating) has read 0 for `--quiet` s in a row (the steps after the LM, the audio decode, take
   seconds at most), or `--timeout` s have passed, or the metrics stop answering (Triton is gone).

Only then does the kubelet send SIGTERM. Triton 2.51 on SIGTERM stops its model schedulers once its
HTTP connections are closed, and an ensemble request between two steps then fails ("Server is
stopping, scheduler for model has stopped accepting new inference requests"): SIGTERM alone does
not drain. Standard library only, Python 3.10 (the Triton image's); exits 0 whatever happens, so a
broken drain never blocks a pod's termination beyond the grace period.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import urllib.request

GAUGE = "musicgen_lm_requests_in_flight"
_LINE = re.compile(rf"^{GAUGE}(?:\{{[^}}]*\}})?\s+(\S+)", re.MULTILINE)


def in_flight(metrics_url: str, timeout: float = 5.0) -> float | None:
    """The gauge summed over its series, or None when the metrics do not answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(metrics_url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except OSError:
        return None
    return sum(float(v) for v in _LINE.findall(text))


def wait_for_drain(
    metrics_url: str, *, delay: float = 20.0, quiet: float = 10.0, timeout: float = 600.0, poll: float = 0.5, log=print
) -> dict:
    """Block until the replica is idle (see the module doc). Returns what it saw."""
    time.sleep(delay)
    start = time.monotonic()
    idle_since = None
    peak = 0.0
    while True:
        now = time.monotonic()
        value = in_flight(metrics_url)
        if value is None:
            log(f"musicgen-drain: metrics at {metrics_url} do not answer; nothing to wait for")
            return {"outcome": "no metrics", "waited_s": round(now - start, 2), "peak_in_flight": peak}
        peak = max(peak, value)
        if value > 0:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        if idle_since is not None and now - idle_since >= quiet:
            log(f"musicgen-drain: idle for {quiet:g} s after {now - start:.1f} s (peak {peak:g} in flight)")
            return {"outcome": "idle", "waited_s": round(now - start, 2), "peak_in_flight": peak}
        if now - start >= timeout:
            log(f"musicgen-drain: {value:g} still in flight after {timeout:g} s; giving up")
            return {"outcome": "timeout", "waited_s": round(now - start, 2), "peak_in_flight": peak}
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="musicgen-drain", description=__doc__.split("\n\n")[0])
    p.add_argument("--delay", type=float, default=20.0, help="seconds before watching (endpoint removal)")
    p.add_argument("--quiet", type=float, default=10.0, help="seconds with nothing in flight that count as idle")
    p.add_argument("--timeout", type=float, default=600.0, help="longest wait for in-flight generations")
    p.add_argument("--metrics", default="http://127.0.0.1:8002/metrics", help="Triton's metrics URL")
    args = p.parse_args(argv)
    if min(args.delay, args.quiet, args.timeout) < 0:
        p.error("--delay, --quiet and --timeout must be >= 0")
    wait_for_drain(args.metrics, delay=args.delay, quiet=args.quiet, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
