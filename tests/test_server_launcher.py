"""The server launcher against the REAL tritonserver bundled in nvidia-pytriton (no mocks).

Each server start takes ~3-5 s on 2 cores. Servers use free ports, a tmp work dir and a unique
shm prefix, so these tests can run next to a `make serve` server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from server import (
    ServerStartError,
    TritonServer,
    build_command,
    build_environment,
    cleanup_shm,
    find_free_ports,
    pid_alive,
    prepare_work_dir,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ECHO_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "echo_repository"
SHM = Path("/dev/shm")
# Unicode, an empty string, embedded NUL and a long string: what numpy 2 used to break in the stub.
TEXTS = ["hello", "", "mélodie 🎵", "a\x00b", "x" * 1000]

BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("boom: this model is broken on purpose")

    def execute(self, requests):
        return []
"""

SLOW_MODEL = """
import time

class TritonPythonModel:
    def initialize(self, args):
        time.sleep(60)

    def execute(self, requests):
        return []
"""


def _proxyless_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def _readyz(health_url: str) -> tuple[int | None, dict]:
    try:
        status, text = _proxyless_get(f"{health_url}/readyz")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    except OSError:
        return None, {}
    return status, json.loads(text)


def _shm_files(prefix: str) -> list[Path]:
    return sorted(SHM.glob(prefix + "*"))


def _stub_pids(prefix: str) -> list[int]:
    """Python backend stub processes of the server using ``prefix`` (their argv contains it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "triton_python_backend_stub" in cmd and prefix in cmd and pid_alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def _make_repo(root: Path, name: str, model_py: str) -> Path:
    """A one-model repository; the config is the echo model's with another name."""
    config = (ECHO_FIXTURE / "echo" / "config.pbtxt").read_text().replace('name: "echo"', f'name: "{name}"')
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    (root / name / "1" / "model.py").write_text(model_py)
    return root


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    return prepare_work_dir(tmp_path_factory.mktemp("triton-work")).path


@pytest.fixture(scope="session")
def echo_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("echo-repo") / "models"
    shutil.copytree(ECHO_FIXTURE, repo, ignore=shutil.ignore_patterns("README.md", "__pycache__"))
    return repo


@pytest.fixture(scope="module")
def echo_server(echo_repo, work_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "echo.log"
    with TritonServer(echo_repo, work_dir=work_dir, log_path=log, ready_timeout=60) as server:
        yield server


# ---- no server needed --------------------------------------------------------------------------


def test_prepare_work_dir_is_idempotent(tmp_path):
    wd = prepare_work_dir(tmp_path / "w")
    lib = wd.backend_dir / "python" / "libtriton_python.so"
    assert lib.is_file() and (wd.cache_dir / "local").is_dir()
    assert wd.stub.is_file() and os.access(wd.stub, os.X_OK)
    assert wd.stub.parent == lib.parent
    before = {p: p.stat().st_mtime_ns for p in (lib, wd.stub)}
    time.sleep(0.01)
    assert prepare_work_dir(tmp_path / "w").path == wd.path
    assert {p: p.stat().st_mtime_ns for p in (lib, wd.stub)} == before  # not copied again
    wd.stub.unlink()  # damaged work dir: repaired
    prepare_work_dir(tmp_path / "w")
    assert wd.stub.is_file()


def test_command_and_environment(work_dir, tmp_path):
    wd = prepare_work_dir(work_dir)
    cmd = build_command(
        wd, tmp_path, http_port=1, grpc_port=2, metrics_port=3, shm_prefix="pfx_", extra_args=["--log-verbose=1"]
    )
    assert cmd[0].endswith("/tritonserver") and os.access(cmd[0], os.X_OK)
    for flag in (
        f"--model-repository={tmp_path}",
        f"--backend-directory={wd.backend_dir}",
        f"--cache-directory={wd.cache_dir}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--http-port=1",
        "--grpc-port=2",
        "--metrics-port=3",
        "--allow-gpu-metrics=false",
        "--backend-config=python,shm-region-prefix-name=pfx_",
        "--log-verbose=1",
    ):
        assert flag in cmd
    env = build_environment(wd.install, base={"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/x"})
    ld = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert ld[0].endswith("nvidia_pytriton.libs") and ld[-1] == "/x"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["PATH"].endswith("/usr/bin")
    # the processes that load the weights get glibc's huge-page malloc; an explicit opt-out is kept
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    env = build_environment(wd.install, base={"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert env["GLIBC_TUNABLES"] == "glibc.pthread.rseq=0:glibc.malloc.hugetlb=1"
    env = build_environment(wd.install, base={"MUSICGEN_HUGEPAGE_MALLOC": "0"})
    assert "GLIBC_TUNABLES" not in env


def test_busy_port_fails_fast(echo_repo, work_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        grpc, metrics = find_free_ports(2)
        t0 = time.monotonic()
        with pytest.raises(ServerStartError, match=f"HTTP port {busy} already in use"):
            TritonServer(echo_repo, http_port=busy, grpc_port=grpc, metrics_port=metrics, work_dir=work_dir).start()
        assert time.monotonic() - t0 < 5


# ---- a running echo server ------------------------------------------------------------------


def test_infer_http_bytes_and_fp32(echo_server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(echo_server.http_endpoint)
    assert client.is_server_ready() and client.is_model_ready("echo")
    text = np.array([t.encode() for t in TEXTS], dtype=np.object_)
    value = np.array([1.5, -2.0, np.pi, 0.0, 1e30], dtype=np.float32)
    inputs = [httpclient.InferInput("TEXT", text.shape, "BYTES"), httpclient.InferInput("VALUE", value.shape, "FP32")]
    inputs[0].set_data_from_numpy(text)
    inputs[1].set_data_from_numpy(value)
    for binary in (True, False):  # binary tensor data and JSON
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("TEXT_OUT", "VALUE_OUT")]
        result = client.infer("echo", inputs, outputs=outputs)
        # binary data comes back as bytes, JSON as str
        assert [t.decode() if binary else t for t in result.as_numpy("TEXT_OUT")] == TEXTS
        np.testing.assert_array_equal(result.as_numpy("VALUE_OUT"), value)
    client.close()


def test_infer_grpc_bytes_and_fp32(echo_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(echo_server.grpc_endpoint)
    assert client.is_server_ready() and client.is_model_ready("echo")
    text = np.array([t.encode() for t in TEXTS], dtype=np.object_)
    value = np.arange(5, dtype=np.float32) / 3
    inputs = [grpcclient.InferInput("TEXT", text.shape, "BYTES"), grpcclient.InferInput("VALUE", value.shape, "FP32")]
    inputs[0].set_data_from_numpy(text)
    inputs[1].set_data_from_numpy(value)
    result = client.infer("echo", inputs)
    assert [t.decode() for t in result.as_numpy("TEXT_OUT")] == TEXTS
    np.testing.assert_array_equal(result.as_numpy("VALUE_OUT"), value)
    client.close()


def test_metrics_and_endpoints(echo_server):
    s = echo_server
    assert s.http_url == f"http://127.0.0.1:{s.http_port}"
    assert s.grpc_endpoint == f"127.0.0.1:{s.grpc_port}"
    assert s.metrics_url == f"http://127.0.0.1:{s.metrics_port}/metrics"
    assert len({s.http_port, s.grpc_port, s.metrics_port}) == 3
    assert s.is_running() and s.is_ready() and s.is_model_ready("echo") and not s.is_model_ready("nope")
    status, body = _proxyless_get(s.metrics_url)
    assert status == 200 and "nv_inference_request_success" in body and 'model="echo"' in body
    assert "--backend-config=python,shm-region-prefix-name=" + s.shm_prefix in s.command
    assert _shm_files(s.shm_prefix), "a running python model should hold a shm region with the prefix"


def test_supervisor_health_endpoints(echo_server):
    """No `musicgen` model here: ready means up, every model READY, every stub there (no real-work probe)."""
    s = echo_server
    assert s.health_url == f"http://127.0.0.1:{s.health_port}" and s.endpoints()["health"] == s.health_url
    status, body = _proxyless_get(f"{s.health_url}/livez")
    assert status == 200 and json.loads(body)["status"] == "alive"
    deadline = time.monotonic() + 60
    while _readyz(s.health_url)[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    status, body = _readyz(s.health_url)
    assert status == 200 and body["status"] == "ready" and body["tritonserver_pid"] == s.pid, body
    with pytest.raises(urllib.error.HTTPError) as info:
        _proxyless_get(f"{s.health_url}/nope")
    assert info.value.code == 404


# ---- stopping -----------------------------------------------------------------------------------


def test_stop_leaves_no_process_and_no_shm(echo_repo, work_dir, tmp_path):
    server = TritonServer(echo_repo, work_dir=work_dir, log_path=tmp_path / "s.log", ready_timeout=60).start()
    pid, prefix = server.pid, server.shm_prefix
    assert _shm_files(prefix) and _stub_pids(prefix)
    t0 = time.monotonic()
    rc = server.stop()
    assert time.monotonic() - t0 < 15
    assert rc == 0, server.log_tail()
    assert not server.is_running() and not pid_alive(pid)
    assert not _stub_pids(prefix)
    assert not _shm_files(prefix)
    assert server.stop() == 0  # idempotent


def test_crashed_server_is_cleaned_up(echo_repo, work_dir, tmp_path):
    """A SIGKILLed server leaks its shm region and leaves its stub behind: stop() clears both."""
    server = TritonServer(
        echo_repo, work_dir=work_dir, log_path=tmp_path / "s.log", ready_timeout=60, supervise=False
    ).start()
    prefix = server.shm_prefix
    os.kill(server.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    server.stop()
    assert server.returncode == -signal.SIGKILL
    assert not _stub_pids(prefix)
    assert not _shm_files(prefix)


def test_server_exits_when_its_parent_is_killed(echo_repo, work_dir, tmp_path):
    """No orphan servers when a test session is SIGKILLed (PR_SET_PDEATHSIG -> graceful SIGTERM)."""
    script = (
        "import sys, time\n"
        "from server import TritonServer\n"
        f"s = TritonServer({str(echo_repo)!r}, work_dir={str(work_dir)!r}, log_path={str(tmp_path / 'p.log')!r})\n"
        "s.start(timeout=60)\n"
        "print(s.pid, s.shm_prefix, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline().split()
        assert len(line) == 2, "the parent did not start a server"
        pid, prefix = int(line[0]), line[1]
        assert pid_alive(pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while (pid_alive(pid) or _stub_pids(prefix)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid) and not _stub_pids(prefix)
    assert not _shm_files(prefix)


# ---- failing starts ------------------------------------------------------------------------------


def test_broken_model_fails_fast_with_log_excerpt(work_dir, tmp_path):
    repo = _make_repo(tmp_path / "repo", "broken", BROKEN_MODEL)
    server = TritonServer(repo, work_dir=work_dir, log_path=tmp_path / "b.log", ready_timeout=60)
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as info:
        server.start()
    assert time.monotonic() - t0 < 30
    msg = str(info.value)
    assert "exited with code 1 before becoming ready" in msg
    assert "boom: this model is broken on purpose" in msg
    assert "failed to load all models" in msg  # from the tail of the log
    assert "CudaDriverHelper" not in msg.split("last ")[0]  # harmless CPU noise is not an "error"
    assert info.value.returncode == 1 and info.value.log_path == tmp_path / "b.log"
    assert not server.is_running() and not _shm_files(server.shm_prefix) and not _stub_pids(server.shm_prefix)


def test_ready_timeout_stops_the_server(work_dir, tmp_path):
    repo = _make_repo(tmp_path / "repo", "slow", SLOW_MODEL)
    server = TritonServer(repo, work_dir=work_dir, log_path=tmp_path / "t.log")
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match="not ready after 3 s") as info:
        server.start(timeout=3)
    assert time.monotonic() - t0 < 20
    assert "last " in str(info.value)
    assert not server.is_running() and not _stub_pids(server.shm_prefix) and not _shm_files(server.shm_prefix)


# ---- the CLI --------------------------------------------------------------------------------------


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_start_status_stop(echo_repo, tmp_path):
    work = tmp_path / "work"
    http, grpc, metrics, health = find_free_ports(4)
    ports = [
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
        "--health-port",
        str(health),
    ]
    start = ["start", "--work-dir", str(work), "--repository", str(echo_repo), *ports, "--timeout", "60"]
    try:
        r = _cli("status", "--work-dir", str(work))
        assert r.returncode == 3 and "not running" in r.stdout

        r = _cli(*start, "--", "--exit-timeout-secs=5")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"http://127.0.0.1:{http}" in r.stdout
        assert f"127.0.0.1:{grpc}" in r.stdout
        assert f"http://127.0.0.1:{metrics}/metrics" in r.stdout
        assert str(work / "tritonserver.log") in r.stdout
        state = json.loads((work / "tritonserver.json").read_text())
        pid = int((work / "tritonserver.pid").read_text())
        assert state["pid"] == pid and pid_alive(pid)
        assert "--exit-timeout-secs=5" in state["command"]
        assert _proxyless_get(f"http://127.0.0.1:{http}/v2/health/ready")[0] == 200

        r = _cli("status", "--work-dir", str(work))
        assert r.returncode == 0 and f"running (supervisor pid {pid}), ready" in r.stdout
        r = _cli("status", "--work-dir", str(work), "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["ready"] is True
        health = state["endpoints"]["health"]
        assert _proxyless_get(f"{health}/livez")[0] == 200
        ready = json.loads(_proxyless_get(f"{health}/readyz")[1])
        assert ready["status"] == "ready" and ready["restarts"] == 0

        # the supervisor restarts a tritonserver that died, on the same ports
        os.kill(ready["tritonserver_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, body = _readyz(health)
            if status == 200 and body["restarts"] == 1:
                break
            time.sleep(0.2)
        assert status == 200 and body["restarts"] == 1, body
        assert "tritonserver exited" in body["last_recovery"]["reason"]
        assert _proxyless_get(f"http://127.0.0.1:{http}/v2/health/ready")[0] == 200
        assert "restarting tritonserver (tritonserver exited" in (work / "tritonserver.log").read_text()

        r = _cli(*start)  # the same server again: fine
        assert r.returncode == 0 and "already running" in r.stdout
        other = find_free_ports(4)
        r = _cli(
            "start",
            "--work-dir",
            str(work),
            "--repository",
            str(echo_repo),
            "--http-port",
            str(other[0]),
            "--grpc-port",
            str(other[1]),
            "--metrics-port",
            str(other[2]),
            "--health-port",
            str(other[3]),
        )
        assert r.returncode == 1 and "already running" in r.stderr and "stop it first" in r.stderr

        r = _cli("stop", "--work-dir", str(work))
        assert r.returncode == 0 and f"tritonserver (pid {pid}) stopped" in r.stdout
        assert not pid_alive(pid)
        assert not _shm_files(state["shm_prefix"]) and not _stub_pids(state["shm_prefix"])
        assert not (work / "tritonserver.pid").exists()

        r = _cli("status", "--work-dir", str(work))
        assert r.returncode == 3 and "not running" in r.stdout
        r = _cli("stop", "--work-dir", str(work))
        assert r.returncode == 0 and "no tritonserver running" in r.stdout
    finally:
        _cli("stop", "--work-dir", str(work), "--timeout", "5")


def test_cli_start_broken_repository_fails_with_log(tmp_path):
    repo = _make_repo(tmp_path / "repo", "broken", BROKEN_MODEL)
    work = tmp_path / "work"
    http, grpc, metrics, health = find_free_ports(4)
    t0 = time.monotonic()
    r = _cli(
        "start",
        "--work-dir",
        str(work),
        "--repository",
        str(repo),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
        "--health-port",
        str(health),
        "--timeout",
        "60",
    )
    assert time.monotonic() - t0 < 30
    assert r.returncode == 1
    assert "exited with code 1 before becoming ready" in r.stderr
    assert "boom: this model is broken on purpose" in r.stderr
    assert f"last 40 lines of {work / 'tritonserver.log'}" in r.stderr
    assert not (work / "tritonserver.pid").exists()
    assert _cli("status", "--work-dir", str(work)).returncode == 3


def test_cli_usage_errors(tmp_path):
    r = _cli("start", "--work-dir", str(tmp_path / "w"), "--repository", str(tmp_path / "missing"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = _cli("start", "--http-port", "99999")
    assert r.returncode == 2 and "--http-port" in r.stderr
    r = _cli("restart")
    assert r.returncode == 2


def test_cleanup_shm_only_touches_its_prefix(tmp_path):
    prefix = "mgtriton_test_" + os.urandom(4).hex() + "_"
    mine, other = SHM / (prefix + "region"), SHM / (prefix[:-1] + "X_region")
    try:
        mine.write_bytes(b"x")
        other.write_bytes(b"x")
        assert cleanup_shm(prefix) == [mine]
        assert not mine.exists() and other.exists()
    finally:
        mine.unlink(missing_ok=True)
        other.unlink(missing_ok=True)
    with pytest.raises(ValueError):
        cleanup_shm("")


CRASH_ONCE_MODEL = """
import pathlib

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        marker = pathlib.Path(__file__).with_name("crashed-once")
        if not marker.exists():  # the first load fails: tritonserver exits while starting
            marker.touch()
            raise RuntimeError("crash while loading, once")

    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]
"""
CRASH_ONCE_CONFIG = """backend: "python"
max_batch_size: 0
input [{ name: "x" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ kind: KIND_CPU count: 1 }]
"""


def test_a_supervised_server_that_exits_while_starting_is_started_again(tmp_path, caplog):
    model = tmp_path / "repo" / "crash_once"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(CRASH_ONCE_MODEL)
    (model / "config.pbtxt").write_text(CRASH_ONCE_CONFIG)
    with caplog.at_level("WARNING", logger="server.triton"):
        with TritonServer(tmp_path / "repo", supervisor_options={"probe_every": 3600}) as srv:
            assert (model / "1" / "crashed-once").exists() and srv.is_running()
            with urllib.request.urlopen(f"{srv.http_url}/v2/models/crash_once/ready", timeout=10) as r:
                assert r.status == 200
    assert any("exited while starting" in r.getMessage() for r in caplog.records)
    # unsupervised, the same crash is the caller's to see
    (model / "1" / "crashed-once").unlink()
    with pytest.raises(ServerStartError):
        TritonServer(tmp_path / "repo", supervise=False).start()


# ---- drain (the Kubernetes pod's preStop) -----------------------------------------------------


def _drain(metrics_url: str, *args: str) -> subprocess.CompletedProcess:
    return _cli("drain", "--metrics", metrics_url, "--delay", "0", *args)


def test_drain_waits_for_the_request_in_flight(triton):
    """`python -m server drain` on the real server with a generation in flight: while the engine holds
    it (its stub stopped, so the in-flight gauge cannot move) the drain gives up at its timeout (exit 4);
    once the engine runs again the drain ends, with the gauge at 0, and the request succeeds (nothing cut)."""
    from client import MusicGenClient
    from server.supervisor import IN_FLIGHT_METRIC, metric_value

    engine = next(
        c
        for c in psutil.Process(triton.pid).children()
        if any(a.endswith("/lm_engine/1/model.py") for a in c.cmdline())
    )

    def in_flight() -> float:
        return metric_value(triton.metrics_url, IN_FLIGHT_METRIC) or 0

    assert _drain(triton.metrics_url, "--quiet", "0", "--timeout", "30").returncode == 0  # idle server: at once
    for seed in range(5):  # the longest clip, caught while the engine reports it (a fast machine may need a retry)
        done: dict = {}

        def generate(seed=seed):
            with MusicGenClient(f"http://{triton.http_endpoint}", timeout=300) as c:
                done["result"] = c.generate("drain me", 30.0, seed=seed)

        request = threading.Thread(target=generate)
        request.start()
        while request.is_alive() and in_flight() < 1:
            time.sleep(0.02)
        engine.suspend()
        if in_flight() >= 1:
            break
        engine.resume()
        request.join(300)
    else:
        pytest.fail("no generation was seen in flight")
    try:
        busy = _drain(triton.metrics_url, "--quiet", "1", "--timeout", "1")
    finally:
        engine.resume()
    assert busy.returncode == 4, busy
    assert "request(s) still in flight after 1 s" in busy.stderr
    drained = _drain(triton.metrics_url, "--quiet", "1", "--timeout", "300")
    assert drained.returncode == 0, drained
    assert "drained: nothing in flight for 1 s" in drained.stdout
    assert in_flight() == 0
    request.join(300)
    assert done["result"].audio.size  # the drained request completed
    gone = _drain(f"http://127.0.0.1:{find_free_ports(1)[0]}/metrics", "--timeout", "30")
    assert gone.returncode == 0 and "do not answer" in gone.stdout  # no server: nothing to wait for
