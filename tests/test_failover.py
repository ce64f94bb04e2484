"""Failover and drain on real components: two tritonserver replicas behind Debian's HAProxy.

Two real tritonservers on the tiny-random repository, HAProxy (HTTP + gRPC, `balance leastconn`,
active health checks) in front, a bounded mixed load of unary generations over HTTP and gRPC:

1. both replicas get requests over both protocols;
2. replica r1 is killed (SIGKILL) with requests in flight on it: those end with a clear error
   (no hang), every request sent after the kill succeeds on r0;
3. r1 restarts on the same ports and HAProxy sends it traffic again (the time is reported);
4. a rollout, as the Triton pod's preStop does it: r1 is taken out of the balancer (as Kubernetes
   drops a terminating pod from its endpoints) with requests in flight on it, the drain waits
   until none is left, then SIGTERM: nothing fails, r1 exits cleanly, the load goes on on r0.

"In flight" is made certain, not left to timing: r1's process group is stopped (SIGSTOP) until
HAProxy counts a request on it, then killed, or taken out of the balancer and resumed (SIGCONT).
Figures are printed (`pytest -s`) and documented in docs/kubernetes.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from haproxy_lb import HAProxy, HealthCheck, ensure_haproxy

from client import MusicGenClient, ServerUnavailable
from server.supervisor import PROBE_MODEL, PROBE_REQUEST, wait_for_drain

ROOT = Path(__file__).resolve().parent.parent

# The replicas' readiness as HAProxy checks it: the supervisor's real-work probe (a one-frame
# generation through the `musicgen` ensemble) POSTed to each replica's HTTP port, every 2 s. It sees a
# dead replica (port closed), a draining one (HTTP closed after SIGTERM) and a broken engine. The
# replicas here run unsupervised (supervise=False): the test itself kills and restarts them, as a
# kubelet would; a pod runs the supervisor, whose /readyz the Kubernetes probes ask (deploy/kubernetes).
READINESS = HealthCheck(
    path=f"/v2/models/{PROBE_MODEL}/infer",
    port_of=lambda r: r.http_port,
    body=PROBE_REQUEST,
    inter_ms=2000,
    timeout_ms=20000,
)

CLIP_SECONDS = 2.0
WORKERS_PER_PROTOCOL = 2
REQUEST_TIMEOUT = 60.0
LOAD_MAX_SECONDS = 240.0
EXIT_TIMEOUT = 60


def wait_until(cond, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


@dataclasses.dataclass
class Outcome:
    protocol: str
    start: float
    end: float
    error: Exception | None = None


class Load:
    """Workers sending one generation after another through the balancer until stopped (bounded)."""

    def __init__(self, lb: HAProxy):
        self.lb = lb
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(proto,), daemon=True)
            for proto in ("http", "grpc")
            for _ in range(WORKERS_PER_PROTOCOL)
        ]

    def _work(self, protocol: str) -> None:
        port = self.lb.http_port if protocol == "http" else self.lb.grpc_port
        # max_duration given: no config lookup through the balancer before each worker's first request
        client = MusicGenClient(
            f"{protocol}://127.0.0.1:{port}", timeout=REQUEST_TIMEOUT, connect_timeout=5, max_duration=30.0
        )
        deadline = time.monotonic() + LOAD_MAX_SECONDS
        with client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                out = Outcome(protocol, time.monotonic(), 0.0)
                with self._lock:
                    self.outcomes.append(out)  # visible while in flight (end == 0)
                try:
                    client.generate("failover", CLIP_SECONDS, seed=1)
                except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                    out.error = exc
                    client.close()  # a fresh connection after a failure, as a user's retry would
                out.end = time.monotonic()

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(REQUEST_TIMEOUT + 10)
        assert not any(t.is_alive() for t in self._threads), "a load worker hung past its request timeout"

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def finished(self) -> int:
        return sum(1 for o in self.snapshot() if o.end)

    def wait_for_more(self, count: int, what: str) -> None:
        """Wait (bounded) until `count` more requests have finished."""
        target = self.finished() + count
        wait_until(lambda: self.finished() >= target, 60, what)


def status(lb: HAProxy, server: str) -> set[str]:
    return {row["status"] for row in lb.server_stats(server).values()}


def sent(lb: HAProxy, server: str) -> dict[str, int]:
    return {backend: int(row["stot"]) for backend, row in lb.server_stats(server).items()}


def served(lb: HAProxy, server: str) -> dict[str, int]:
    return {backend: int(row["hrsp_2xx"]) for backend, row in lb.server_stats(server).items()}


def in_flight(lb: HAProxy, server: str) -> int:
    return sum(int(row["scur"]) for row in lb.server_stats(server).values())


def freeze_with_requests_in_flight(lb: HAProxy, replica, server: str) -> None:
    """Stop the replica's processes (SIGSTOP) and wait until HAProxy has a request out on it."""
    os.killpg(replica.pid, signal.SIGSTOP)
    wait_until(lambda: in_flight(lb, server) >= 1, 60, f"a request in flight on frozen {server}")


def restart(replica, attempts: int = 3) -> int:
    """Start the replica again on its ports; a start that fails is retried after a backoff, as the
    kubelet restarts a container that crashed while starting (tritonserver has been seen aborting at
    load with a boost lock_exception in the python backend while the machine is busy: docs/operations.md).
    Returns the attempts it took."""
    from server import ServerStartError

    for attempt in range(1, attempts + 1):
        try:
            replica.start()
            return attempt
        except ServerStartError as exc:
            if attempt == attempts:
                raise
            print(f"\nrestart attempt {attempt} failed, retrying with the same settings: {str(exc)[-300:]}")
            time.sleep(2.0 * attempt)
    raise AssertionError("unreachable")


@pytest.fixture
def replicas(tiny_repo, tmp_path):
    from server import TritonServer, find_free_ports

    servers = []
    for i in range(2):
        http, grpc, metrics = find_free_ports(3)
        servers.append(
            TritonServer(
                tiny_repo,
                http_port=http,
                grpc_port=grpc,
                metrics_port=metrics,
                exit_timeout=EXIT_TIMEOUT,
                log_path=tmp_path / f"triton-r{i}.log",
                supervise=False,
            )
        )
    try:
        for s in servers:
            s.start(wait=False)
        for s in servers:
            s.wait_until_ready()
        yield servers
    finally:
        for s in servers:
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.killpg(s.pid, signal.SIGCONT)
            s.stop(timeout=10)


def test_failover_and_drain_behind_haproxy(replicas, tmp_path):
    ensure_haproxy()
    r1 = replicas[1]
    figures: dict[str, object] = {}
    with HAProxy(replicas, READINESS, tmp_path) as lb:
        wait_until(lambda: status(lb, "r0") == status(lb, "r1") == {"UP"}, 30, "both replicas UP in HAProxy")
        load = Load(lb).start()
        try:
            # 1. spread: leastconn gives both replicas requests, over both protocols
            wait_until(
                lambda: all(n >= 10 for s in ("r0", "r1") for n in served(lb, s).values()),
                90,
                "both replicas served HTTP and gRPC requests",
            )
            figures["served_before_kill"] = {s: served(lb, s) for s in ("r0", "r1")}
            assert not [o.error for o in load.snapshot() if o.error], "failures before any fault"

            # 2. kill r1 with requests in flight on it
            freeze_with_requests_in_flight(lb, r1, "r1")
            stuck = in_flight(lb, "r1")
            t_kill = time.monotonic()
            os.killpg(r1.pid, signal.SIGKILL)  # tritonserver and its model processes, as an OOM kill or a node loss
            r1.stop(timeout=5)
            t_gone = time.monotonic()  # reaped: its ports are closed; what started before was in flight on it
            wait_until(lambda: status(lb, "r1") <= {"DOWN"}, 30, "HAProxy marks the killed replica DOWN")
            figures["down_after_kill_s"] = round(time.monotonic() - t_kill, 2)
            at_kill = [o for o in load.snapshot() if o.start < t_gone]
            wait_until(
                lambda: all(o.end for o in at_kill), REQUEST_TIMEOUT + 10, "the requests in flight at the kill end"
            )
            failed = [o for o in at_kill if o.error]
            # its in-flight requests end at once with an error that says the server went away (no hang)
            assert len(failed) >= stuck, (stuck, [repr(o.error) for o in failed])
            for o in failed:
                assert isinstance(o.error, ServerUnavailable), repr(o.error)
                assert o.end - t_kill < REQUEST_TIMEOUT / 2, "an in-flight request was not ended by the kill"
            figures["failed_in_flight"] = {p: sum(o.protocol == p for o in failed) for p in ("http", "grpc")}
            figures["errors"] = sorted({f"{type(o.error).__name__}: {o.error}"[:160] for o in failed})

            # new requests succeed on r0 while r1 is gone
            load.wait_for_more(8, "requests served while r1 is down")
            after_kill = [o for o in load.snapshot() if o.start >= t_gone and o.end]
            assert after_kill and not [o for o in after_kill if o.error], [
                repr(o.error) for o in after_kill if o.error
            ][:5]

            # 3. restart r1 on the same ports; HAProxy sends it traffic again
            t_restart = time.monotonic()
            figures["restart_attempts"] = restart(r1)
            t_ready = time.monotonic()
            base = sent(lb, "r1")
            wait_until(
                lambda: status(lb, "r1") == {"UP"} and all(n > base[b] for b, n in sent(lb, "r1").items()),
                60,
                "the restarted replica serves HTTP and gRPC requests again",
            )
            t_rejoin = time.monotonic()
            figures["restart_to_ready_s"] = round(t_ready - t_restart, 2)
            figures["ready_to_traffic_s"] = round(t_rejoin - t_ready, 2)
            figures["restart_to_traffic_s"] = round(t_rejoin - t_restart, 2)

            # 4. a rollout, as the Triton pod's preStop does it: r1 leaves the balancer (Kubernetes drops a
            #    terminating pod from its endpoints), the drain (the pod's preStop, `python -m server drain`) waits until nothing is in flight on it,
            #    then SIGTERM: its in-flight requests complete and it exits cleanly.
            freeze_with_requests_in_flight(lb, r1, "r1")
            figures["drained_in_flight"] = in_flight(lb, "r1")
            for backend in ("triton_http", "triton_grpc"):
                lb.command(f"set server {backend}/r1 state drain")
            t_drain = time.monotonic()
            os.killpg(r1.pid, signal.SIGCONT)
            seen = wait_for_drain(r1.metrics_url, delay=0, quiet=3, timeout=60)
            assert seen["outcome"] == "idle", seen
            figures["drain_wait_s"] = round(time.monotonic() - t_drain, 2)
            t_term = time.monotonic()
            os.kill(r1.pid, signal.SIGTERM)
            rc = r1.process.wait(EXIT_TIMEOUT + 30)
            figures["sigterm_to_exit_s"] = round(time.monotonic() - t_term, 2)
            assert rc == 0, f"tritonserver did not exit cleanly (exit code {rc}):\n{r1.log_tail(20)}"
            load.wait_for_more(8, "requests served after the drain")
        finally:
            load.stop()
        outcomes = load.snapshot()
        after_restart = [o for o in outcomes if o.start >= t_restart]
        assert after_restart and not [o for o in after_restart if o.error], [
            repr(o.error) for o in after_restart if o.error
        ][:5]  # the drain cut nothing
        stats = lb.stats()
    figures["requests"] = len(outcomes)
    figures["failures"] = sum(o.error is not None for o in outcomes)
    figures["per_replica"] = {
        f"{backend}/{server}": {"sent": int(row["stot"]), "2xx": int(row["hrsp_2xx"]), "5xx": int(row["hrsp_5xx"])}
        for (backend, server), row in sorted(stats.items())
    }
    print("\nfailover figures:", figures)
