"""Helper processes of the integration tests (Caddy, Prometheus, the token check, Streamlit):
started in their own session with their output in a log, waited for by a probe, always stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = Path(__file__).resolve().parent / "debian_setup.sh"


def install_debian(*packages: str) -> None:
    """Debian's `packages`, installed by tests/debian_setup.sh when missing (root; CI runs as root)."""
    r = subprocess.run(["bash", str(SETUP), *packages], capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, f"installing {' '.join(packages)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def install_debian_tools() -> None:
    """Debian's caddy and prometheus (+ promtool)."""
    install_debian("caddy", "prometheus")


class LocalProcs:
    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, log: Path, **kw) -> subprocess.Popen:
        with open(log, "wb") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs.clear()


def wait_for(what: str, probe, proc: subprocess.Popen, log: Path, timeout: float = 60.0):
    """probe()'s first truthy value (OSError counts as not yet); fails with the log's tail if the
    process exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
            if value:
                return value
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def start_page(procs: LocalProcs, grpc_endpoint: str, port: int, log: Path) -> str:
    """`streamlit run ui/app.py` on 127.0.0.1:`port`, talking to the server at `grpc_endpoint`; its URL
    once Streamlit answers its health check."""
    env = {**os.environ, "MUSICGEN_TRITON_URL": grpc_endpoint, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "viewer", "--server.fileWatcherType", "none"]  # fmt: skip
    proc = procs.start(cmd, log, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200

    wait_for("streamlit", healthy, proc, log)
    return url
