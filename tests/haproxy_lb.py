"""A real HAProxy (Debian's 2.6) in front of N tritonserver replicas on loopback, for the failover test.

HTTP (mode http, HTTP/1.1 to the replicas) and gRPC (HTTP/2 cleartext end to end: `proto h2` on
the frontend bind and on every server line) are balanced with `leastconn`: a generation lasts
seconds to minutes, so the replica with the fewest outstanding requests gets the next one. A gRPC
stream is one HTTP/2 stream, and HAProxy keeps a stream on the server connection it started on:
streams stay on their replica. Connection failures are retried on another replica (`retries` +
`option redispatch 1`); a request already sent is never replayed, so a replica dying mid-request
gives that request an error (502) instead of a silent second generation.

The active health check is a parameter (`HealthCheck`): an HTTP GET of `path` (or, with a `body`,
a POST of it: a real inference) on the port `port_of(replica)` returns, every `inter_ms` on a
connection of its own. The gRPC backend's servers track the HTTP backend's (`track`): one check a
replica, not two.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

from local_procs import LocalProcs, install_debian, wait_for


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    path: str
    port_of: Callable[[object], int]  # replica (a server.TritonServer) -> the port the check asks
    body: bytes | None = None  # JSON to POST to `path` (a real inference) instead of a GET
    inter_ms: int = 500
    timeout_ms: int = 2000
    fall: int = 2
    rise: int = 2

    @property
    def haproxy_lines(self) -> str:
        if self.body is None:
            return f"    option httpchk GET {self.path}\n    http-check expect status 200"
        body = self.body.decode()
        assert "'" not in body, "the check's body goes into a single-quoted HAProxy string"
        return (
            "    option httpchk\n"
            f"    http-check send meth POST uri {self.path} hdr Content-Type application/json body '{body}'\n"
            "    http-check expect status 200"
        )


def ensure_haproxy() -> str:
    """The haproxy binary, installed from Debian's packages when missing (tests/debian_setup.sh)."""
    install_debian("haproxy")
    return "haproxy"


def render_config(replicas: Sequence, check: HealthCheck, *, http_port: int, grpc_port: int, stats_socket: Path) -> str:
    """haproxy.cfg for `replicas` (objects with http_port, grpc_port and host)."""

    def servers(port_attr: str, extra: str) -> str:
        return "\n".join(
            f"    server r{i} {r.host}:{getattr(r, port_attr)} {extra.format(i=i, port=check.port_of(r))}"
            for i, r in enumerate(replicas)
        )

    return f"""\
global
    stats socket {stats_socket} mode 600 level admin
    maxconn 512

defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout check {check.timeout_ms}ms
    retries 3
    option redispatch 1
    default-server inter {check.inter_ms} fall {check.fall} rise {check.rise}

frontend http_in
    bind 127.0.0.1:{http_port}
    default_backend triton_http

frontend grpc_in
    bind 127.0.0.1:{grpc_port} proto h2
    default_backend triton_grpc

backend triton_http
    balance leastconn
    # one server connection per request: Triton's SIGTERM waits for open HTTP connections
    option http-server-close
{check.haproxy_lines}
{servers("http_port", "check port {port}")}

backend triton_grpc
    balance leastconn
{servers("grpc_port", "proto h2 track triton_http/r{i}")}
"""


class HAProxy:
    """One haproxy process (foreground, own session) with a stats socket; a context manager."""

    def __init__(self, replicas: Sequence, check: HealthCheck, work_dir: Path, *, binary: str = "haproxy"):
        from server import find_free_ports

        self.work_dir = Path(work_dir)
        self.http_port, self.grpc_port = find_free_ports(2)
        self.stats_socket = self.work_dir / "haproxy.sock"
        self.config_path = self.work_dir / "haproxy.cfg"
        self.log_path = self.work_dir / "haproxy.log"
        self.config_path.write_text(
            render_config(
                replicas, check, http_port=self.http_port, grpc_port=self.grpc_port, stats_socket=self.stats_socket
            )
        )
        self.binary = binary
        self._procs = LocalProcs()
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> HAProxy:
        check = subprocess.run(
            [self.binary, "-c", "-f", str(self.config_path)], check=False, capture_output=True, text=True, timeout=60
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejected its config:\n{check.stdout}{check.stderr}")
        self.process = self._procs.start(
            [self.binary, "-db", "-f", str(self.config_path)], self.log_path, stdin=subprocess.DEVNULL
        )
        try:
            wait_for("haproxy", lambda: self.stats() is not None, self.process, self.log_path, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """`show stat` per (backend, server): status, stot (requests sent), scur (in flight), ..."""
        text = self.command("show stat").lstrip("# ")
        return {
            (row["pxname"], row["svname"]): row
            for row in csv.DictReader(io.StringIO(text))
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def server_stats(self, server: str) -> dict[str, dict[str, str]]:
        """{backend: row} for one server name (r0, r1, ...)."""
        return {backend: row for (backend, name), row in self.stats().items() if name == server}

    def stop(self) -> None:
        self._procs.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
