"""Chaos: mixed clients while the engine's stub is killed, then stalled, then tritonserver is killed.

Clients (loopback only, a bounded number of threads that stop by themselves): unary HTTP, gRPC
streams, streams left early (cancel), clients that disconnect mid-stream, and inputs the server
refuses. Faults, one at a time, each waited out: kill -9 of the lm_engine stub, SIGSTOP of it (the
engine makes no progress: the supervisor's watchdog), kill -9 of tritonserver. Checked: every request
ends with success or a typed, clear error (none hangs past the client's bound, none is a raw
exception); the supervisor recovers each time and /readyz says so; afterwards every valid request
succeeds and the engine's in-flight gauge returns to 0 (no leaked KV rows).

Short by default (part of `make test`). `make chaos-soak` sets MUSICGEN_CHAOS_SECONDS (seconds of
load before each fault and after the last) and MUSICGEN_CHAOS_REPORT (a JSON file for the figures).
Nothing here asserts a duration: waits are for conditions, with generous bounds.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import psutil
import pytest

from client import (
    InvalidParameter,
    ModelNotReady,
    MusicGenClient,
    MusicGenError,
    ServerUnavailable,
)
from client.errors import classify
from server import TritonServer
from server.supervisor import http_get, metric_value

LOAD_SECONDS = float(os.environ.get("MUSICGEN_CHAOS_SECONDS", "3"))
REPORT = os.environ.get("MUSICGEN_CHAOS_REPORT")
WORKERS = 4
CLIENT_TIMEOUT = 60.0  # a request still open after this is a hang
RECOVERY_BOUND = 180.0  # generous: 2 shared cores
FAULT_ERRORS = (ServerUnavailable, ModelNotReady)  # what a request may get while the server recovers


@pytest.fixture(scope="module")
def chaos_server(tiny_repo):
    options = {"interval": 0.5, "stall_seconds": 15.0, "probe_every": 5.0}  # 15 s: no false stall on 2 busy cores
    with TritonServer(tiny_repo, supervisor_options=options) as srv:
        yield srv


def _readyz(srv) -> tuple[int | None, dict]:
    status, body = http_get(f"{srv.health_url}/readyz", 5.0)
    return status, (json.loads(body) if status in (200, 503) else {})


def _steadily_ready(srv, seconds: float) -> bool:
    """/readyz answers 200 for `seconds` in a row: the supervisor (checking every 0.5 s here) has looked
    at the processes since, so a stub that just died is not taken for a ready server."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if _readyz(srv)[0] != 200:
            return False
        time.sleep(0.2)
    return True


def _wait(cond, bound: float, what: str, interval: float = 0.1):
    end = time.monotonic() + bound
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {bound:g} s: {what}")


def _tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _stub(srv, model: str) -> psutil.Process:
    return next(
        c for c in psutil.Process(srv.pid).children() if any(a.endswith(f"/{model}/1/model.py") for a in c.cmdline())
    )


class Load:
    """WORKERS threads cycling through the request kinds until stopped; every outcome recorded."""

    KINDS = ("http", "stream", "cancel", "disconnect", "invalid")

    def __init__(self, srv):
        self.srv = srv
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records: list[tuple[str, str, float]] = []  # (kind, outcome, seconds)
        self.messages: dict[str, list[str]] = {}  # outcome -> what the errors said
        self.current: dict[str, tuple[str, float]] = {}  # thread -> (kind, start) of its request now
        self.threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(WORKERS)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        end = time.monotonic() + CLIENT_TIMEOUT + 30
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        hung = [t for t in self.threads if t.is_alive()]
        frames = sys._current_frames()
        assert not hung, "clients hung:\n" + "\n".join(
            f"{self.current.get(t.name)}: " + "".join(traceback.format_stack(frames[t.ident])) for t in hung
        )

    def count(self, outcome: str = "ok") -> int:
        with self.lock:
            return sum(1 for _, o, _ in self.records if o == outcome)

    def _worker(self, i: int) -> None:
        n = i
        while not self.stop.is_set():
            kind = self.KINDS[n % len(self.KINDS)]
            n += 1
            t0 = time.monotonic()
            self.current[threading.current_thread().name] = (kind, time.time())
            try:
                getattr(self, "_" + kind)(n)
                outcome = "ok"
            except MusicGenError as exc:
                outcome = type(exc).__name__
                with self.lock:
                    self.messages.setdefault(outcome, []).append(f"{kind}: {exc.detail or exc.message}"[:300])
            except Exception as exc:  # noqa: BLE001 - recorded, and the test fails on it
                outcome = f"RAW {type(exc).__name__}: {exc}"
            with self.lock:
                self.records.append((kind, outcome, time.monotonic() - t0))
            if outcome != "ok":
                time.sleep(0.2)  # a client backs off while the server recovers

    def _client(self, proto: str, **kw) -> MusicGenClient:
        ep = self.srv.grpc_endpoint if proto == "grpc" else self.srv.http_endpoint
        return MusicGenClient(f"{proto}://{ep}", timeout=CLIENT_TIMEOUT, connect_timeout=5, **kw)

    def _http(self, n: int) -> None:
        with self._client("http") as c:
            c.generate("chaos unary", 0.5, seed=n)

    def _stream(self, n: int) -> None:
        with self._client("grpc") as c:
            assert any(e.kind == "final" for e in c.stream("chaos stream", 1.0, seed=n))

    def _cancel(self, n: int) -> None:
        with self._client("grpc") as c:
            for _ in c.stream("chaos cancel", 3.0, seed=n):
                break  # leaving the loop cancels the request on the server

    def _disconnect(self, n: int) -> None:
        import numpy as np
        import tritonclient.grpc as grpcclient

        got, errors = threading.Event(), []

        def callback(result, error):
            errors.append(error)
            got.set()

        c = grpcclient.InferenceServerClient(self.srv.grpc_endpoint)
        try:
            c.start_stream(callback=callback)
            ins = [grpcclient.InferInput("prompt", [1], "BYTES"), grpcclient.InferInput("duration", [1], "FP32")]
            ins[0].set_data_from_numpy(np.array([b"chaos disconnect"], dtype=object))
            ins[1].set_data_from_numpy(np.array([3.0], np.float32))
            c.async_stream_infer("musicgen_stream", ins)
            got.wait(CLIENT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a bare tritonclient: judged as the project's client would
            got.wait(1.0)  # the real cause reaches the callback, maybe a moment later (as the client does it)
            cause = next((e for e in errors if e is not None), exc)
            raise classify(cause, url=self.srv.grpc_url, model="musicgen_stream") from None
        finally:
            # gone mid-stream without a word: the connection closes under the stream, as when a client
            # process dies. (tritonclient's close() would half-close politely and then wait, without a
            # bound, until the server ends the RPC: a stream whose request hangs on the server never
            # does.) With the channel closed, close() only joins a thread that already ended.
            c._channel.close()
            c.close()

    def _invalid(self, n: int) -> None:
        with self._client("http", max_duration=1000) as c:
            try:
                c.generate("chaos invalid", 500.0)
            except InvalidParameter:
                return
        raise AssertionError("an invalid duration was accepted")


def _fault(srv, load: Load, name: str, act) -> dict:
    """Let the load run, inflict the fault, wait for the recovery; the figures of it."""
    ok = load.count()
    _wait(lambda: load.count() >= ok + 3, RECOVERY_BOUND, "clients succeed before the fault")
    time.sleep(LOAD_SECONDS)
    rss = _tree_rss(srv.pid)
    before = len(srv.supervisor.recoveries)
    t0 = time.monotonic()
    act()
    saw_503 = False
    while time.monotonic() - t0 < RECOVERY_BOUND:
        status, _ = _readyz(srv)
        saw_503 |= status == 503
        if status == 200 and len(srv.supervisor.recoveries) > before:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"{name}: not ready again within {RECOVERY_BOUND:g} s: {_readyz(srv)}")
    seconds = time.monotonic() - t0
    states = [state for t, state, _ in srv.supervisor.history if t >= time.time() - seconds - 1]
    assert "recovering" in states, (name, list(srv.supervisor.history))
    assert saw_503 or "recovering" in states
    ok_before = load.count()
    _wait(lambda: load.count() > ok_before, RECOVERY_BOUND, f"{name}: clients succeed again")
    return {
        "fault": name,
        "ready_again_s": round(seconds, 2),
        "saw_readyz_503": saw_503,
        "supervisor": srv.supervisor.recoveries[-1],
        "server_tree_rss_mb_before": round(rss / 2**20, 1),
    }


def test_chaos(chaos_server):
    srv = chaos_server
    _wait(lambda: _readyz(srv)[0] == 200, RECOVERY_BOUND, "ready before the chaos")
    rss0, t_start = _tree_rss(srv.pid), time.monotonic()
    faults = []
    with Load(srv) as load:
        faults.append(
            _fault(srv, load, "kill -9 lm_engine stub", lambda: os.kill(_stub(srv, "lm_engine").pid, signal.SIGKILL))
        )
        faults.append(
            _fault(
                srv,
                load,
                "SIGSTOP lm_engine stub (engine stall)",
                lambda: os.kill(_stub(srv, "lm_engine").pid, signal.SIGSTOP),
            )
        )
        faults.append(_fault(srv, load, "kill -9 tritonserver", lambda: os.kill(srv.pid, signal.SIGKILL)))
        rss_after_faults = _tree_rss(srv.pid)
        time.sleep(LOAD_SECONDS)
        rss_end = _tree_rss(srv.pid)
        n_after = len(load.records)
        _wait(lambda: len(load.records) >= n_after + 2 * len(Load.KINDS), RECOVERY_BOUND, "load after the faults")
    records = load.records
    # the supervisor says how the stub ended (its exit status: the log says nothing of a kill -9), unless
    # tritonserver aborted on the stub's death before the supervisor's next check (seen once in ~20 runs)
    reason = faults[0]["supervisor"]["reason"]
    assert "killed by SIGKILL" in reason or reason == "tritonserver exited (code -6)", faults[0]

    raw = [r for r in records if r[1].startswith("RAW")]
    assert not raw, f"requests ended with an unclassified error: {raw[:5]}"
    hung = [r for r in records if r[1] == "RequestTimeout"]
    assert not hung, f"requests hung until the client's {CLIENT_TIMEOUT:g} s bound: {hung[:5]}"
    allowed = {"ok", *(e.__name__ for e in FAULT_ERRORS)}
    odd = [r for r in records if r[1] not in allowed]
    assert not odd, f"unexpected outcomes: {Counter(r[1] for r in odd)}: " + str(
        {k: load.messages.get(k, [])[:5] for k in {r[1] for r in odd}}
    )

    # after the recoveries every valid request succeeds, on every path. A fault this test did not cause
    # may still be healing (the musicgen_stream stub has been seen dying on its own under this load; the
    # supervisor restarts it, and the summary lists every recovery): the checks are of a recovered server.
    _wait(lambda: _steadily_ready(srv, 2.0), RECOVERY_BOUND, "ready after the chaos")
    for proto in ("http", "grpc"):
        with MusicGenClient(
            f"{proto}://{srv.http_endpoint if proto == 'http' else srv.grpc_endpoint}", timeout=CLIENT_TIMEOUT
        ) as c:
            for seed in range(3):
                assert c.generate("after chaos", 0.5, seed=seed).audio.size
            if proto == "grpc":
                assert any(e.kind == "final" for e in c.stream("after chaos", 1.0, seed=9))
    # cancels and disconnects leave no request (no KV rows) behind in the engine
    _wait(
        lambda: metric_value(srv.metrics_url, "musicgen_lm_requests_in_flight") == 0,
        RECOVERY_BOUND,
        "the engine's in-flight gauge returns to 0",
    )
    assert _readyz(srv)[0] == 200

    summary = {
        "load_seconds_per_phase": LOAD_SECONDS,
        "soak_seconds": round(time.monotonic() - t_start, 1),
        "requests": len(records),
        "outcomes": dict(Counter(r[1] for r in records)),
        "by_kind": {k: dict(Counter(o for kk, o, _ in records if kk == k)) for k in Load.KINDS},
        "faults": faults,
        "recoveries": [r["reason"] for r in srv.supervisor.recoveries],
        # the same server process from `start` to the first fault, and from the last restart to `end`
        "server_tree_rss_mb": {
            "start": round(rss0 / 2**20, 1),
            "before_first_fault": faults[0]["server_tree_rss_mb_before"],
            "after_last_restart": round(rss_after_faults / 2**20, 1),
            "end": round(rss_end / 2**20, 1),
        },
    }
    print(json.dumps(summary, indent=2))
    if REPORT:
        Path(REPORT).write_text(json.dumps(summary, indent=2) + "\n")
