"""Keep a tritonserver serving, and say honestly whether it does.

Triton 2.51 never restarts a python model's stub process that died (out-of-memory kill, native
crash): every later request to that model fails while ``/v2/health/ready`` stays 200, and requests
that were in flight on it hang. A stuck engine (an ORT call that never returns, a dead scheduler
thread) looks the same from outside. The :class:`Supervisor` watches for both and restarts the
server (a model reload through the repository API is not enough: it leaves the requests that were in
flight hanging, and with such requests pending Triton answers the reload without replacing the dead
stub). Every ``interval`` s it checks

* the tritonserver process is alive and answers ``/v2/health/live``;
* every model's stub processes are still there (psutil: the server's children when it became ready;
  a dead one's exit status, e.g. ``killed by SIGSEGV``, goes into the reason);
* the engine's heartbeat (``musicgen_lm_heartbeat_timestamp_seconds`` on the metrics endpoint, set by
  the engine thread at least every 0.2 s while it loops) is younger than ``stall_seconds``;
* every model is READY in the repository index;
* the latest real-work probe (a one-frame generation through the ``musicgen`` ensemble, after each
  start and every ``probe_every`` s) succeeded.

A dead process, a stub gone or a stale heartbeat -> restart (SIGKILL the server and its stubs: the
in-flight requests end at once with a connection error; start again on the same ports; probe). It
serves ``GET /livez`` (200 while the supervisor runs) and ``GET /readyz`` (200 ``{"status": "ready"}``
only when everything above holds, else 503 with the state) on ``health_port``; see docs/operations.md.
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePath

import psutil

log = logging.getLogger("server.supervisor")

DEFAULT_HEALTH_PORT = 8003
HEARTBEAT_METRIC = "musicgen_lm_heartbeat_timestamp_seconds"
IN_FLIGHT_METRIC = "musicgen_lm_requests_in_flight"  # requests queued or generating in the engine
PROBE_MODEL = "musicgen"
PROBE_REQUEST = json.dumps(
    {
        "inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["supervisor probe"]},
            {"name": "duration", "datatype": "FP32", "shape": [1], "data": [0.02]},
        ],  # one frame
    }
).encode()
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Supervisor:
    """Watches ``server`` (a started :class:`server.triton.TritonServer`) on a thread of its own."""

    def __init__(
        self,
        server,
        *,
        interval: float = 1.0,
        stall_seconds: float = 30.0,
        probe_every: float = 60.0,
        probe_timeout: float = 60.0,
        live_failures: int = 5,
        restart_timeout: float | None = None,
    ):
        self.server = server
        self.interval, self.stall_seconds = interval, stall_seconds
        self.probe_every, self.probe_timeout = probe_every, probe_timeout
        self.live_failures, self.restart_timeout = live_failures, restart_timeout
        self.state, self.reason, self.broken_model = "starting", "", None
        self.recoveries: list[dict] = []  # {"reason", "model", "seconds", "at"} per restart
        self.history: collections.deque = collections.deque(maxlen=200)  # (unix time, state, reason) changes
        self._stubs: dict[int, str] = {}  # pid -> model of the stub processes when the server became ready
        self._probe: dict = {}  # the latest real-work probe: {"ok", "error", "at"}
        self._probe_thread: threading.Thread | None = None
        self._not_live = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)
        self._http = _HealthServer((server.address or "", server.health_port), self)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        threading.Thread(target=self._http.serve_forever, name="health-http", daemon=True).start()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ---- what /livez and /readyz answer ----------------------------------------------------------

    def readiness(self) -> tuple[int, dict]:
        body = {"status": self.state, "tritonserver_pid": self.server.pid, "restarts": len(self.recoveries)}
        if self.state != "ready":
            body["reason"] = self.reason
            if self.broken_model:
                body["model"] = self.broken_model
        if self._probe:
            body["probe"] = dict(self._probe)
        if self.recoveries:
            body["last_recovery"] = self.recoveries[-1]
        return (200 if self.state == "ready" else 503), body

    # ---- the watch loop -----------------------------------------------------------------------

    def _run(self) -> None:
        self._after_start()
        while not self._stop.wait(self.interval):
            try:
                problem = self._check()
            except Exception as exc:  # a bug here must not end the supervision
                log.exception("supervisor check failed")
                problem = ("not_ready", f"supervisor check failed: {exc}", None)
            if self._stop.is_set():
                return
            if problem is None:
                self._set("ready", "", None)
            elif problem[0] == "restart":
                self._recover(problem[1], problem[2])
            else:
                self._set("not_ready", problem[1], problem[2])

    def _set(self, state: str, reason: str, model: str | None) -> None:
        if (state, reason) != (self.state, self.reason):
            self.history.append((time.time(), state, reason))
            (log.info if state == "ready" else log.warning)("triton %s%s", state, f": {reason}" if reason else "")
        self.state, self.reason, self.broken_model = state, reason, model

    def _after_start(self) -> None:
        """Baseline of the stub processes, then a real-work probe before saying ready."""
        self._stubs = stub_pids(self.server.pid)
        self._not_live = 0
        self._probe = {}
        self._run_probe()

    def _check(self) -> tuple[str, str, str | None] | None:
        """None when healthy, else (action, reason, model): action "restart" or "not_ready"."""
        srv = self.server
        rc = srv.process.poll() if srv.process else None
        if srv.process is None or rc is not None:
            return "restart", f"tritonserver exited (code {rc})", None
        now = stub_pids(srv.pid)
        gone = [(pid, model) for pid, model in self._stubs.items() if pid not in now]
        if gone:
            pid, model = gone[0]
            return "restart", f"a process of model {model} died (pid {pid}, {exit_status(pid)})", model
        if http_get(f"{srv.http_url}/v2/health/live", 2.0)[0] != 200:
            self._not_live += 1
            if self._not_live >= self.live_failures:
                return "restart", f"tritonserver did not answer /v2/health/live {self._not_live} times", None
            return "not_ready", "tritonserver does not answer /v2/health/live", None
        self._not_live = 0
        age = heartbeat_age(srv.metrics_url)
        if age is not None and age > self.stall_seconds:
            return "restart", f"the LM engine made no progress for {age:.0f} s", "lm_engine"
        models = model_states(srv.http_url)
        if models is None:
            return "not_ready", "the repository index does not answer", None
        broken = sorted(m for m, st in models.items() if st != "READY")
        if broken:
            return "not_ready", f"model(s) not READY: {', '.join(broken)}", broken[0]
        self._maybe_probe(PROBE_MODEL in models)
        if self._probe and not self._probe["ok"]:
            err = self._probe["error"]
            if "is not healthy" in err:  # a stub died between two checks
                return "restart", f"real-work probe: {err}", PROBE_MODEL
            return "not_ready", f"real-work probe failed: {err}", PROBE_MODEL
        if PROBE_MODEL in models and not self._probe:
            return "not_ready", "waiting for the first real-work probe", None
        return None

    def _maybe_probe(self, has_model: bool) -> None:
        if not has_model or (self._probe_thread and self._probe_thread.is_alive()):
            return
        if not self._probe or time.time() - self._probe["at"] >= self.probe_every:
            self._probe_thread = threading.Thread(target=self._run_probe, name="triton-probe", daemon=True)
            self._probe_thread.start()

    def _run_probe(self) -> None:
        if self._stop.is_set():
            return
        models = model_states(self.server.http_url) or {}
        if PROBE_MODEL not in models:
            return
        status, body = _post(f"{self.server.http_url}/v2/models/{PROBE_MODEL}/infer", PROBE_REQUEST, self.probe_timeout)
        error = "" if status == 200 else _error_text(status, body)
        self._probe = {"ok": status == 200, "error": error, "at": time.time()}

    def _recover(self, reason: str, model: str | None) -> None:
        t0, at = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._set("recovering", reason, model)
        backoff = 1.0
        while not self._stop.is_set():
            log.warning("restarting tritonserver: %s", reason)
            try:
                self.server.restart(self.restart_timeout, reason=reason)
                self._after_start()  # a failing probe now shows as not_ready: no restart loop for it
                break
            except Exception as exc:  # noqa: BLE001 - ServerStartError (with the log excerpt), OSError, psutil.Error: try again
                log.error("restart failed: %s", exc)
                reason = f"restart failed: {str(exc).splitlines()[0]}"
            self._set("recovering", reason, model)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)
        if self._stop.is_set():
            return
        seconds = round(time.monotonic() - t0, 2)
        self.recoveries.append({"reason": reason, "model": model, "seconds": seconds, "at": at})
        log.warning("tritonserver restarted in %.1f s", seconds)
        self._set("starting", "restarted; checking", None)


# ---- probes (stdlib HTTP + psutil, so the container's interpreter needs nothing else) -------------


def http_get(url: str, timeout: float) -> tuple[int | None, bytes]:
    return _request(urllib.request.Request(url), timeout)


def _post(url: str, data: bytes, timeout: float) -> tuple[int | None, bytes]:
    return _request(urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}), timeout)


def _request(req: urllib.request.Request, timeout: float) -> tuple[int | None, bytes]:
    try:
        with _NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return None, str(exc).encode()


def _error_text(status: int | None, body: bytes) -> str:
    try:
        msg = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        msg = body.decode(errors="replace")[:300]
    return f"HTTP {status}: {msg}" if status else f"no answer: {msg}"


def model_states(http_url: str) -> dict[str, str] | None:
    """{model: state} from the repository index, or None when the server does not answer."""
    status, body = _post(f"{http_url}/v2/repository/index", b"{}", 5.0)
    if status != 200:
        return None
    return {m["name"]: m.get("state", "") for m in json.loads(body)}


def metric_value(metrics_url: str, name: str) -> float | None:
    """A Prometheus metric summed over its series, or None when absent (or no answer)."""
    status, body = http_get(metrics_url, 5.0)
    if status != 200:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in body.decode(errors="replace").splitlines()
        if line.startswith((name + " ", name + "{"))
    ]
    return sum(values) if values else None


def heartbeat_age(metrics_url: str) -> float | None:
    """Seconds since the engine thread last looped, or None when there is no engine (or no answer)."""
    value = metric_value(metrics_url, HEARTBEAT_METRIC)
    return time.time() - value if value else None


def wait_for_drain(
    metrics_url: str, *, delay: float = 20.0, quiet: float = 10.0, timeout: float = 600.0, poll: float = 0.5
) -> dict:
    """Block until the server has no generation left; what ``python -m server drain`` (the pod's preStop) runs.

    Sleeps ``delay`` s (a Terminating pod leaves the endpoints meanwhile), then polls the engine's
    in-flight gauge (requests queued or generating) until it has read 0 for ``quiet`` s in a row (the
    audio decode after the LM takes seconds), ``timeout`` s have passed, or the metrics stop answering
    (the server is gone: nothing to wait for). Returns ``{"outcome": "idle" | "timeout" | "no metrics",
    "waited_s", "peak_in_flight", "in_flight"}``.
    """
    time.sleep(delay)
    start = time.monotonic()
    idle_since, peak = None, 0.0
    while True:
        now, value = time.monotonic(), metric_value(metrics_url, IN_FLIGHT_METRIC)
        outcome = None
        if value is None:
            outcome = "no metrics"
        else:
            peak = max(peak, value)
            idle_since = (idle_since or now) if value == 0 else None
            if idle_since is not None and now - idle_since >= quiet:
                outcome = "idle"
            elif now - start >= timeout:
                outcome = "timeout"
        if outcome:
            return {"outcome": outcome, "waited_s": round(now - start, 2), "peak_in_flight": peak, "in_flight": value}
        time.sleep(poll)


def stub_pids(server_pid: int | None) -> dict[int, str]:
    """{pid: model} of the live python stub processes among the server's children (the model from the
    stub's model.py path)."""
    stubs: dict[int, str] = {}
    try:
        children = psutil.Process(server_pid).children() if server_pid else []
    except psutil.Error:
        return stubs
    for child in children:
        try:
            script = next((a for a in child.cmdline() if a.endswith("/model.py")), None)
            if script and child.status() != psutil.STATUS_ZOMBIE:
                stubs[child.pid] = PurePath(script).parent.parent.name
        except psutil.Error:
            continue
    return stubs


def exit_status(pid: int) -> str:
    """How a dead child ended ("killed by SIGSEGV", "exit code 1"), from /proc/<pid>/stat while it is a
    zombie: Triton reaps a dead stub only when it unloads the model, and its log often says nothing."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            status = int(fh.read().rsplit(")", 1)[1].split()[-1])  # field 52, as waitpid reports it
    except (OSError, ValueError, IndexError):
        return "exit status unknown"
    if status & 0x7F:
        try:
            name = signal.Signals(status & 0x7F).name
        except ValueError:
            name = f"signal {status & 0x7F}"
        return f"killed by {name}" + (" (core dumped)" if status & 0x80 else "")
    return f"exit code {status >> 8}"


class _HealthServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, supervisor: Supervisor):
        self.supervisor = supervisor
        super().__init__(address, _HealthHandler)


class _HealthHandler(BaseHTTPRequestHandler):
    server: _HealthServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/livez":
            code, body = 200, {"status": "alive", "state": self.server.supervisor.state}
        elif path == "/readyz":
            code, body = self.server.supervisor.readiness()
        else:
            code, body = 404, {"error": "not found: try /livez or /readyz"}
        data = (json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # probes every few seconds: keep the log quiet
        pass
