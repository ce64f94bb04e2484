"""The deployed host's door, with the real parts: Debian's Caddy running deploy/docker/Caddyfile with a
self-issued certificate (`tls internal`, its CA exported from Caddy's data dir), our token check
(deploy/auth/token_auth.py) behind `forward_auth`, the real tritonserver of the `triton` fixture and
the real Streamlit page, all on loopback.

Checked: port 80 only redirects; no token / a wrong token -> HTTP 401 and gRPC UNAUTHENTICATED (and
the client's AuthenticationError, CLI exit 4); the right token -> a unary HTTP generation and a gRPC
stream through TLS with the project's client; an untrusted certificate -> TLSError, exit 4; the page
behind its password over TLS; rotation without a restart; Triton listening on loopback only; no
token in any log.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from local_procs import LocalProcs, install_debian_tools, start_page, wait_for
from cli_run import run_cli

ROOT = Path(__file__).resolve().parents[1]
CADDYFILE = ROOT / "deploy" / "docker" / "Caddyfile"
TOKEN_AUTH = ROOT / "deploy" / "auth" / "token_auth.py"
PAGE_USER, PAGE_PASSWORD = "musicgen", "page-pass-0123"
PROMPT = "calm piano"

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("streamlit")


@pytest.fixture(scope="module", autouse=True)
def _debian_tools():
    install_debian_tools()


def new_token(tokens: Path, name: str) -> str:
    out = subprocess.run(
        [sys.executable, str(TOKEN_AUTH), "--tokens", str(tokens), "new", name],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def door(triton, tmp_path_factory):
    """Caddy + token check + the page in front of the `triton` fixture; yields a dict of facts."""
    from server.triton import find_free_ports

    tmp = tmp_path_factory.mktemp("door")
    http_port, https_port, health_port, auth_port, page_port = find_free_ports(5)
    tokens = tmp / "api-tokens"
    token = new_token(tokens, "ci")
    pw_hash = subprocess.run(
        ["caddy", "hash-password", "--plaintext", PAGE_PASSWORD], check=True, capture_output=True, text=True
    ).stdout.strip()
    auth_file = tmp / "page-auth.caddy"
    auth_file.write_text(f"basicauth {{\n\t{PAGE_USER} {pw_hash}\n}}\n")
    procs = LocalProcs()
    try:
        auth_log = tmp / "token_auth.log"
        p = procs.start(
            [sys.executable, str(TOKEN_AUTH), "--tokens", str(tokens), "serve", "--listen", f"127.0.0.1:{auth_port}"],
            auth_log,
        )
        wait_for(
            "token_auth",
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{auth_port}/healthz", timeout=2).status == 200,
            p,
            auth_log,
        )

        start_page(procs, triton.grpc_endpoint, page_port, tmp / "streamlit.log")

        caddy_log = tmp / "caddy.log"
        cenv = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp),
            "XDG_DATA_HOME": str(tmp / "data"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "MUSICGEN_HTTP_PORT": str(http_port),
            "MUSICGEN_HTTPS_PORT": str(https_port),
            "MUSICGEN_HEALTH_PORT": str(health_port),
            "MUSICGEN_SITE_HOST": "127.0.0.1",
            "MUSICGEN_TLS_MODE": "internal",
            "MUSICGEN_AUTH_UPSTREAM": f"127.0.0.1:{auth_port}",
            "MUSICGEN_TRITON_GRPC": f"127.0.0.1:{triton.grpc_port}",
            "MUSICGEN_TRITON_HTTP": f"127.0.0.1:{triton.http_port}",
            "MUSICGEN_UI_UPSTREAM": f"127.0.0.1:{page_port}",
            "MUSICGEN_PAGE_AUTH_FILE": str(auth_file),
        }
        p = procs.start(
            ["caddy", "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"], caddy_log, env=cenv, cwd=tmp
        )
        wait_for(
            "caddy",
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{health_port}/", timeout=2).status == 200,
            p,
            caddy_log,
        )
        ca = tmp / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        ctx = wait_for(
            "caddy's local CA", lambda: ca.is_file() and ssl.create_default_context(cafile=str(ca)), p, caddy_log
        )
        base = f"https://127.0.0.1:{https_port}"
        # the site certificate is issued in the background: wait until a verified handshake works
        wait_for("caddy's certificate", lambda: _status(f"{base}/v2/health/ready", ctx) == 401, p, caddy_log)
        yield {
            "base": base,
            "http": f"http://127.0.0.1:{http_port}",
            "ctx": ctx,
            "ca": ca,
            "token": token,
            "tokens": tokens,
            "https_port": https_port,
            "logs": [caddy_log, auth_log],
            "triton": triton,
        }
    finally:
        procs.stop()


def _status(url: str, ctx, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _client(door, proto: str, token: str | None, ca=True):
    from client import MusicGenClient

    scheme = {"http": "https", "grpc": "grpcs"}[proto]
    return MusicGenClient(
        f"{scheme}://127.0.0.1:{door['https_port']}",
        token=token,
        ca_bundle=door["ca"] if ca else None,
        timeout=120,
        connect_timeout=10,
        max_duration=30,
    )


def test_port_80_only_redirects_to_https(door):
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    for path in ("/", "/v2/health/ready"):
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(door["http"] + path, timeout=10)
        assert e.value.code in (301, 302, 308)
        # to https on the same host and path (Caddy 2.6 names no port: in production it is 443)
        assert e.value.headers["Location"] in (
            f"https://127.0.0.1{path}",
            f"https://127.0.0.1:{door['https_port']}{path}",
        )


def test_http_api_refuses_missing_and_wrong_tokens(door):
    url = f"{door['base']}/v2/health/ready"
    assert _status(url, door["ctx"]) == 401
    assert _status(url, door["ctx"], {"Authorization": "Bearer mgt_wrong"}) == 401
    assert _status(url, door["ctx"], {"Authorization": f"Basic {door['token']}"}) == 401
    assert _status(url, door["ctx"], {"Authorization": f"Bearer {door['token']}"}) == 200


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_client_reports_a_refused_token(door, proto):
    from client import AuthenticationError

    for token in (None, "mgt_wrong"):
        with _client(door, proto, token) as c, pytest.raises(AuthenticationError, match="refused the API token"):
            c.generate(PROMPT, 0.5, seed=1)
    if proto == "grpc":  # the stream too: gRPC UNAUTHENTICATED from the proxy's 401
        with _client(door, proto, "mgt_wrong") as c, pytest.raises(AuthenticationError):
            list(c.stream(PROMPT, 0.5, seed=1))


def test_unary_http_generation_and_grpc_stream_through_tls(door):
    with _client(door, "http", door["token"]) as c:
        r = c.generate(PROMPT, 0.5, seed=7)
    assert r.sample_rate == 32000 and r.duration == pytest.approx(0.5)
    with _client(door, "grpc", door["token"]) as c:
        events = list(c.stream(PROMPT, 0.5, seed=7))
    assert [e.kind for e in events][-1] == "final"
    assert any(e.kind == "audio_chunk" for e in events)
    # same seed, same codes whichever door the request came through
    assert (events[-1].result.codes == r.codes).all()


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_untrusted_certificate_is_a_tls_error(door, proto):
    from client import TLSError

    with _client(door, proto, door["token"], ca=False) as c, pytest.raises(TLSError, match="TLS with the server"):
        c.models()


def test_cli_token_from_env_and_exit_codes(door):
    url = f"grpcs://127.0.0.1:{door['https_port']}"
    env = {**os.environ, "MUSICGEN_API_TOKEN": door["token"], "MUSICGEN_CA_BUNDLE": str(door["ca"])}

    def cli(*args, **extra):
        return run_cli("models", "--url", url, *args, env={**env, **extra})

    ok = cli("--json")
    assert ok.returncode == 0, ok.stderr
    assert any(m["name"] == "musicgen" for m in json.loads(ok.stdout)["models"])
    bad = cli(MUSICGEN_API_TOKEN="mgt_wrong")
    assert bad.returncode == 4 and "refused the API token" in bad.stderr
    assert "mgt_wrong" not in bad.stderr
    health = run_cli("health", "--no-generate", "--url", url, env={**env, "MUSICGEN_API_TOKEN": ""})
    assert health.returncode == 4, health.stdout + health.stderr
    untrusted = cli(MUSICGEN_CA_BUNDLE="")
    assert untrusted.returncode == 4 and "TLS" in untrusted.stderr


def test_page_behind_its_password_over_tls(door):
    import base64

    url = f"{door['base']}/_stcore/health"
    assert _status(url, door["ctx"]) == 401
    bad = base64.b64encode(f"{PAGE_USER}:wrong-password".encode()).decode()
    assert _status(url, door["ctx"], {"Authorization": f"Basic {bad}"}) == 401
    # an API token is no page password
    assert _status(url, door["ctx"], {"Authorization": f"Bearer {door['token']}"}) == 401
    good = base64.b64encode(f"{PAGE_USER}:{PAGE_PASSWORD}".encode()).decode()
    assert _status(url, door["ctx"], {"Authorization": f"Basic {good}"}) == 200
    # and the page password is no API token
    assert _status(f"{door['base']}/v2/health/ready", door["ctx"], {"Authorization": f"Basic {good}"}) == 401


def test_host_smoke_check_through_the_tls_proxy(door, tmp_path):
    """deploy/host/smoke.py as the bootstrap runs it: Triton directly, page and API via the proxy."""
    (tmp_path / "pw").write_text(PAGE_PASSWORD + "\n")
    (tmp_path / "token").write_text(door["token"] + "\n")
    t = door["triton"]
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "host" / "smoke.py"),
            "--triton",
            f"http://127.0.0.1:{t.http_port}",
            "--page",
            door["base"],
            "--server-name",
            "127.0.0.1",
            "--ca-file",
            str(door["ca"]),
            "--password-file",
            str(tmp_path / "pw"),
            "--token-file",
            str(tmp_path / "token"),
            "--timeout",
            "60",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "page refuses anonymous (401) and serves musicgen (200)" in r.stdout
    assert "API refuses requests without a token (401) and serves the deploy token (200)" in r.stdout
    assert door["token"] not in r.stdout + r.stderr and PAGE_PASSWORD not in r.stdout + r.stderr
    # a certificate that does not match the name is a failure, not a pass
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "host" / "smoke.py"),
            "--triton",
            f"http://127.0.0.1:{t.http_port}",
            "--page",
            door["base"],
            "--server-name",
            "localhost",
            "--ca-file",
            str(door["ca"]),
            "--timeout",
            "1",
            "--interval",
            "1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "FAILED" in r.stderr


def test_rotation_takes_effect_without_restart(door):
    url = f"{door['base']}/v2/health/ready"
    old = new_token(door["tokens"], "rotate-me")
    assert _status(url, door["ctx"], {"Authorization": f"Bearer {old}"}) == 200
    new = new_token(door["tokens"], "rotate-me")  # same name: replaces the old token
    assert new != old
    assert _status(url, door["ctx"], {"Authorization": f"Bearer {old}"}) == 401
    assert _status(url, door["ctx"], {"Authorization": f"Bearer {new}"}) == 200
    subprocess.run(
        [sys.executable, str(TOKEN_AUTH), "--tokens", str(door["tokens"]), "revoke", "rotate-me"],
        check=True,
        capture_output=True,
    )
    assert _status(url, door["ctx"], {"Authorization": f"Bearer {new}"}) == 401
    stored = door["tokens"].read_text()
    assert old not in stored and new not in stored and door["token"] not in stored
    assert oct(door["tokens"].stat().st_mode & 0o777) == "0o600"


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on `port` (from /proc/net/tcp{,6}: no traffic needed)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


def test_triton_ports_listen_on_loopback_only(door):
    t = door["triton"]
    for port in (t.http_port, t.grpc_port, t.metrics_port):
        addrs = _listening_addresses(port)
        # 127.0.0.1, in /proc/net/tcp or as IPv4-mapped ::ffff:127.0.0.1 in /proc/net/tcp6
        assert addrs and addrs <= {"0100007F", "0000000000000000FFFF00000100007F"}, (
            f"port {port} listens on {addrs} (want 127.0.0.1 only)"
        )


def test_no_token_in_any_log(door):
    for log in door["logs"]:
        text = log.read_text()
        assert door["token"] not in text and "mgt_wrong" not in text, log


@pytest.mark.parametrize("mode, issuer", [("internal", "internal"), ("acme", None)])
def test_tls_mode_picks_the_issuer(tmp_path, mode, issuer):
    """With a domain (acme) Caddy's automatic HTTPS uses its public ACME issuers; without, its own CA."""
    auth = tmp_path / "auth.caddy"
    auth.write_text("basicauth {\n\tmusicgen $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG\n}\n")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "MUSICGEN_SITE_HOST": "music.example.com",
        "MUSICGEN_TLS_MODE": mode,
        "MUSICGEN_PAGE_AUTH_FILE": str(auth),
    }
    r = subprocess.run(
        ["caddy", "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    cfg = json.loads(r.stdout)
    policies = ((cfg["apps"].get("tls") or {}).get("automation") or {}).get("policies") or []
    issuers = {i["module"] for p in policies if "music.example.com" in p.get("subjects", []) for i in p["issuers"]}
    assert issuers == ({issuer} if issuer else set())
    servers = cfg["apps"]["http"]["servers"].values()
    assert any(s["listen"] == [":443"] for s in servers)
    assert not any(addr.endswith(":80") for s in servers for addr in s["listen"])  # 80: only the redirect Caddy adds
