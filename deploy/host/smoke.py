#!/usr/bin/env python3
"""Readiness that matters, run on the host by bootstrap.sh after `docker compose up`.

1. Triton: a real, small generation through the `musicgen` ensemble over HTTP (0.5 s of audio,
   fixed seed), checking the outputs' shapes and values against the serving contract. The
   `/v2/health/ready` endpoint alone stays 200 after a python model's stub has died.
2. The page: through the proxy, an anonymous request must be refused (401) and the configured
   user with the password from --password-file must get the page (200); without a password file
   (a re-run after the first success removed it) only the refusal is checked.
3. The API through the proxy: /v2/health/ready without a token must be refused (401); with the
   token from --token-file it must answer 200.
Over https the proxy is reached on loopback with the certificate's name (--server-name) as SNI
and Host, verified against --ca-file (the proxy's own CA) or the system's trust store.

Standard library only: it runs with the host's python3 (3.10 on Ubuntu 22.04). The password and
the token are read from files and never printed. Exit 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.client
import json
import math
import ssl
import sys
import time
import urllib.error
import urllib.request

SMOKE_PROMPT = "a short calm piano phrase"
SMOKE_DURATION = 0.5
SMOKE_SEED = 1234
FRAME_RATE = 50  # EnCodec 32 kHz frames per second (serving contract)
HOP = 640  # samples per frame


class SmokeError(RuntimeError):
    """permanent=True: retrying cannot help (a contract violation, access control missing)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class _NamedTLSConnection(http.client.HTTPSConnection):
    """HTTPS to an address (loopback) with another name for SNI and certificate verification."""

    def __init__(self, host, server_name=None, **kw):
        super().__init__(host, **kw)
        self.server_name = server_name

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.server_name or self.host)


class _NamedTLSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context, server_name):
        super().__init__(context=context)
        self.tls_context, self.server_name = context, server_name

    def https_open(self, req):
        return self.do_open(
            functools.partial(_NamedTLSConnection, server_name=self.server_name, context=self.tls_context), req
        )


TLS = {"context": None, "server_name": None}  # set from --ca-file / --server-name


def _request(url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30.0):
    headers = dict(headers or {})
    if url.startswith("https://") and TLS["server_name"]:
        headers["Host"] = TLS["server_name"]
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    opener = urllib.request.build_opener(
        _NamedTLSHandler(TLS["context"] or ssl.create_default_context(), TLS["server_name"])
    )
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def infer_request() -> dict:
    return {
        "inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [SMOKE_PROMPT]},
            {"name": "duration", "datatype": "FP32", "shape": [1], "data": [SMOKE_DURATION]},
            {"name": "seed", "datatype": "INT64", "shape": [1], "data": [SMOKE_SEED]},
        ],
        "outputs": [{"name": n} for n in ("audio", "sample_rate", "audio_codes", "seed_used")],
    }


def check_triton(base: str, timeout: float) -> str:
    status, _ = _request(f"{base}/v2/health/ready", timeout=10)
    if status != 200:
        raise SmokeError(f"Triton is not ready ({base}/v2/health/ready answered {status})")
    body = json.dumps(infer_request()).encode()
    status, raw = _request(f"{base}/v2/models/musicgen/infer", body, {"Content-Type": "application/json"}, timeout)
    if status != 200:
        raise SmokeError(f"musicgen inference answered HTTP {status}: {raw[:300].decode(errors='replace')}")
    try:
        outputs = {o["name"]: o for o in json.loads(raw)["outputs"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise SmokeError(f"musicgen inference returned no readable outputs ({exc})") from None
    missing = {"audio", "sample_rate", "audio_codes", "seed_used"} - outputs.keys()
    if missing:
        raise SmokeError(f"musicgen inference lacks outputs {sorted(missing)}", permanent=True)
    sample_rate = outputs["sample_rate"]["data"][0]
    if sample_rate <= 0:
        raise SmokeError(f"sample_rate {sample_rate} is not positive", permanent=True)
    frames = int(SMOKE_DURATION * FRAME_RATE)
    codes_shape = outputs["audio_codes"]["shape"]
    if len(codes_shape) != 2 or codes_shape[1] != frames or codes_shape[0] < 1:
        raise SmokeError(f"audio_codes shape {codes_shape}, expected [codebooks, {frames}]", permanent=True)
    audio = outputs["audio"]
    shape = audio["shape"]
    if len(shape) != 2 or shape[1] != frames * HOP or shape[0] not in (1, 2):
        raise SmokeError(f"audio shape {shape}, expected [channels, {frames * HOP}]", permanent=True)
    values = audio["data"]
    if len(values) != shape[0] * shape[1] or not all(math.isfinite(v) for v in values):
        raise SmokeError("audio has missing or non-finite samples", permanent=True)
    if outputs["seed_used"]["data"][0] != SMOKE_SEED:
        raise SmokeError(
            f"seed_used {outputs['seed_used']['data'][0]} is not the seed sent ({SMOKE_SEED})", permanent=True
        )
    return f"{shape[0]} channel(s) x {shape[1]} samples at {sample_rate} Hz, codes {codes_shape}"


def check_page(base: str, user: str, password: str | None) -> str:
    status, _ = _request(f"{base}/", timeout=15)
    if status in (502, 503, 504):
        raise SmokeError(f"the proxy answered {status}: the page is not up yet")
    if status != 401:
        raise SmokeError(
            f"the page answered {status} to an anonymous request: access control is not enforced", permanent=True
        )
    if password is None:
        # after the first success the plaintext password is gone from the host: only the refusal is checked
        return "page refuses anonymous (401); no password file, login not tried"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    status, _ = _request(f"{base}/", headers={"Authorization": f"Basic {token}"}, timeout=15)
    if status != 200:
        raise SmokeError(f"the page answered {status} to {user} with the configured password", permanent=status == 401)
    status, _ = _request(f"{base}/_stcore/health", headers={"Authorization": f"Basic {token}"}, timeout=15)
    if status != 200:
        raise SmokeError(f"the Streamlit health endpoint behind the proxy answered {status}")
    return f"page refuses anonymous (401) and serves {user} (200)"


def check_api(base: str, token: str | None) -> str:
    status, _ = _request(f"{base}/v2/health/ready", timeout=15)
    if status in (502, 503, 504):
        raise SmokeError(f"the proxy answered {status} for the API: Triton or the token check is not up yet")
    if status != 401:
        raise SmokeError(f"the API answered {status} without a token: access control is not enforced", permanent=True)
    if token is None:
        return "API refuses requests without a token (401); no token file, token not tried"
    status, _ = _request(f"{base}/v2/health/ready", headers={"Authorization": f"Bearer {token}"}, timeout=15)
    if status != 200:
        raise SmokeError(f"the API answered {status} with the deploy token", permanent=status == 401)
    return "API refuses requests without a token (401) and serves the deploy token (200)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triton", default="http://127.0.0.1:8000", help="Triton HTTP base URL")
    ap.add_argument("--page", default=None, help="page base URL behind the proxy (omit to skip the page check)")
    ap.add_argument("--user", default="musicgen")
    ap.add_argument(
        "--password-file",
        default=None,
        help="file holding the page password (first line); without it only the 401 is checked",
    )
    ap.add_argument("--token-file", default=None, help="file holding an API token (first line)")
    ap.add_argument("--ca-file", default=None, help="CA certificate(s) for the proxy's https (default: system store)")
    ap.add_argument("--server-name", default=None, help="the certificate's name, sent as SNI and Host")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to keep retrying")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between tries")
    args = ap.parse_args(argv)
    TLS["context"] = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    TLS["server_name"] = args.server_name

    deadline = time.monotonic() + args.timeout
    last = None
    while True:
        try:
            print(
                "triton: " + check_triton(args.triton.rstrip("/"), timeout=max(30.0, deadline - time.monotonic())),
                flush=True,
            )
            if args.page:
                password = None
                if args.password_file:
                    with open(args.password_file, encoding="utf-8") as f:
                        password = f.readline().rstrip("\r\n")
                print("page: " + check_page(args.page.rstrip("/"), args.user, password), flush=True)
                token = None
                if args.token_file:
                    with open(args.token_file, encoding="utf-8") as f:
                        token = f.readline().strip()
                print("api: " + check_api(args.page.rstrip("/"), token), flush=True)
            print("smoke: OK", flush=True)
            return 0
        except (SmokeError, OSError) as exc:
            last = exc
            if getattr(exc, "permanent", False):
                break
        if time.monotonic() + args.interval > deadline:
            break
        print(f"smoke: not yet ({last}); retrying", flush=True)
        time.sleep(args.interval)
    print(f"smoke: FAILED: {last}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
