"""deploy/host/smoke.py (the bootstrap's real readiness check) against local stand-ins for Triton's
HTTP API and for the password proxy, on 127.0.0.1: it must pass a correct stack and catch a wrong
one (bad shapes, a page open to anonymous users, a wrong password)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy_fakes import REPO

SMOKE = REPO / "deploy" / "host" / "smoke.py"
USER, PASSWORD = "musicgen", "Pg-pass-8fK2-unique-7731"


class Fake:
    """Behaviour knobs for the stand-in servers."""

    def __init__(self):
        self.frames_off = 0
        self.page_open = False
        self.ready = True
        self.requests = []


def serve(handler_cls) -> tuple[ThreadingHTTPServer, str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def triton_handler(fake: Fake):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, body=b"", ctype="application/json"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/v2/health/ready":
                return self._send(200 if fake.ready else 503)
            self._send(404)

        def do_POST(self):
            if self.path != "/v2/models/musicgen/infer":
                return self._send(404)
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append(req)
            inputs = {i["name"]: i for i in req["inputs"]}
            assert inputs["prompt"]["datatype"] == "BYTES" and inputs["duration"]["datatype"] == "FP32"
            frames = int(inputs["duration"]["data"][0] * 50) + fake.frames_off
            samples = frames * 640
            body = {
                "model_name": "musicgen",
                "outputs": [
                    {"name": "audio", "datatype": "FP32", "shape": [1, samples], "data": [0.01] * samples},
                    {"name": "sample_rate", "datatype": "INT32", "shape": [1], "data": [32000]},
                    {"name": "audio_codes", "datatype": "INT64", "shape": [4, frames], "data": [7] * (4 * frames)},
                    {"name": "seed_used", "datatype": "INT64", "shape": [1], "data": inputs["seed"]["data"]},
                ],
            }
            self._send(200, json.dumps(body).encode())

    return H


def page_handler(fake: Fake):
    good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if not fake.page_open and self.headers.get("Authorization") != good:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="restricted"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"ok" if self.path == "/_stcore/health" else b"<html>musicgen</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return H


@pytest.fixture
def stack(tmp_path):
    fake = Fake()
    t_srv, t_url = serve(triton_handler(fake))
    p_srv, p_url = serve(page_handler(fake))
    pw = tmp_path / "page-password"
    pw.write_text(PASSWORD + "\n")
    yield fake, t_url, p_url, pw
    t_srv.shutdown()
    p_srv.shutdown()


def smoke(t_url, p_url, pw, timeout="3"):
    pw_args = ["--password-file", str(pw)] if pw else []
    return subprocess.run(
        [
            sys.executable,
            str(SMOKE),
            "--triton",
            t_url,
            "--page",
            p_url,
            "--user",
            USER,
            *pw_args,
            "--timeout",
            timeout,
            "--interval",
            "0.2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_smoke_passes_on_a_correct_stack_and_sends_a_real_request(stack):
    fake, t_url, p_url, pw = stack
    r = smoke(t_url, p_url, pw)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "smoke: OK" in r.stdout
    assert "1 channel(s) x 16000 samples at 32000 Hz" in r.stdout
    req = fake.requests[0]
    assert {o["name"] for o in req["outputs"]} == {"audio", "sample_rate", "audio_codes", "seed_used"}
    assert PASSWORD not in r.stdout + r.stderr


def test_smoke_fails_on_wrong_audio_length(stack):
    fake, t_url, p_url, pw = stack
    fake.frames_off = 1
    r = smoke(t_url, p_url, pw)
    assert r.returncode == 1 and "audio_codes shape" in r.stderr


def test_smoke_fails_when_the_page_is_open_to_anonymous_users(stack):
    fake, t_url, p_url, pw = stack
    fake.page_open = True
    r = smoke(t_url, p_url, pw, timeout="30")
    assert r.returncode == 1 and "access control is not enforced" in r.stderr
    assert "retrying" not in r.stdout  # a permanent failure does not wait for the timeout


def test_smoke_fails_with_a_wrong_password(stack, tmp_path):
    fake, t_url, p_url, _ = stack
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    r = smoke(t_url, p_url, wrong, timeout="1")
    assert r.returncode == 1 and "answered 401 to musicgen" in r.stderr
    assert "not-the-password" not in r.stdout + r.stderr


def test_without_the_password_file_only_the_refusal_is_checked(stack):
    fake, t_url, p_url, _ = stack
    r = smoke(t_url, p_url, None)
    assert r.returncode == 0 and "login not tried" in r.stdout
    fake.page_open = True
    r = smoke(t_url, p_url, None)
    assert r.returncode == 1 and "access control is not enforced" in r.stderr


def test_smoke_waits_for_triton_then_gives_up(stack):
    fake, t_url, p_url, pw = stack
    fake.ready = False
    r = smoke(t_url, p_url, pw, timeout="1")
    assert r.returncode == 1 and "Triton is not ready" in r.stderr and "retrying" in r.stdout


def test_smoke_runs_on_the_hosts_python_3_10():
    import ast

    ast.parse(SMOKE.read_text(), feature_version=(3, 10))
