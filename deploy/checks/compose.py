"""deploy/compose.yaml against the Compose Specification schema, plus the stack's own rules.

check_compose(doc) returns findings for: schema errors (the compose-spec JSON schema vendored by
check-jsonschema); the GPU reservation, shm_size, healthchecks and restart policies; the UI waiting
for a healthy Triton and the proxy for a healthy UI; Triton's ports bound to loopback only; the
proxy publishing only the page port and requiring the auth file; the export one-shot profile; no
secret in any environment; nothing privileged or on the host network.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from . import COMPOSE_FILE, DEPLOY_DIR, OPEN_PORTS

MIN_SHM_BYTES = 1 << 30
LONG_RUNNING = ("triton", "ui", "auth", "proxy")
MONITORING = ("prometheus", "grafana")


def load(path: Path = COMPOSE_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def schema() -> dict:
    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    return json.loads(text)


def interpolate(value: str) -> str:
    """Compose variable interpolation with every variable unset: defaults apply, :? becomes 'set'."""

    def repl(m):
        body = m.group(1)
        for sep in (":-", "-"):
            if sep in body:
                return body.split(sep, 1)[1]
        if ":?" in body or "?" in body:
            return "set"
        return ""

    return re.sub(r"\$\{([^}]*)\}", repl, str(value))


def parse_size(value) -> int:
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", str(value).strip().lower())
    if not m:
        return -1
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)])


def published(service: dict) -> list[tuple[str, str, str]]:
    """(host_ip, host_port, container_port) of every published port (short or long syntax)."""
    out = []
    for p in service.get("ports", []) or []:
        if isinstance(p, dict):
            out.append((str(p.get("host_ip", "0.0.0.0")), str(p.get("published", "")), str(p.get("target", ""))))
            continue
        parts = interpolate(p).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            out.append(("0.0.0.0", parts[0], parts[1]))
        else:
            out.append(("0.0.0.0", "(random)", parts[0]))
    return out


def _depends(service: dict, on: str) -> str | None:
    dep = service.get("depends_on")
    if isinstance(dep, dict) and on in dep:
        return (dep[on] or {}).get("condition", "service_started")
    if isinstance(dep, list) and on in dep:
        return "service_started"
    return None


def check_compose(doc: dict) -> list[str]:
    out = [
        f"schema: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in jsonschema.Draft202012Validator(schema()).iter_errors(doc)
    ]
    services = doc.get("services") or {}
    for name in (*LONG_RUNNING, "export"):
        if name not in services:
            out.append(f"service {name} is missing")
    if out and any(s not in services for s in LONG_RUNNING):
        return out
    for name, svc in services.items():
        if svc.get("privileged"):
            out.append(f"{name}: privileged containers are not allowed")
        if svc.get("network_mode") == "host":
            out.append(f"{name}: host networking would publish every port")
        env = svc.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else [str(e).split("=", 1)[0] for e in env]
        for key in keys:
            if re.search(r"PASSWORD|SECRET|TOKEN", str(key), re.I):
                out.append(f"{name}: environment {key} looks like a secret; secrets never go into the compose file")
        if "build" in svc:
            df = DEPLOY_DIR.parent / (
                svc["build"].get("dockerfile", "Dockerfile") if isinstance(svc["build"], dict) else ""
            )
            if not df.exists():
                out.append(f"{name}: build dockerfile {df} does not exist")
        for host_ip, host_port, target in published(svc):
            if name == "proxy":
                if target != host_port or target not in map(str, OPEN_PORTS):
                    out.append(
                        f"proxy publishes {host_ip}:{host_port}->{target}; only {' and '.join(map(str, OPEN_PORTS))}"
                    )
            elif host_ip not in ("127.0.0.1", "::1"):
                out.append(f"{name} publishes port {target} on {host_ip}: only the proxy may be reachable from outside")
    for name in LONG_RUNNING:
        svc = services[name]
        if svc.get("restart") not in ("unless-stopped", "always"):
            out.append(f"{name}: restart policy must be unless-stopped or always, is {svc.get('restart')!r}")
        hc = svc.get("healthcheck") or {}
        if not hc.get("test") or hc.get("disable"):
            out.append(f"{name}: needs a healthcheck")
        if "logging" not in svc:
            out.append(f"{name}: needs a bounded logging configuration")
    triton = services["triton"]
    devices = (((triton.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices):
        out.append("triton: needs a GPU reservation (deploy.resources.reservations.devices: nvidia, [gpu])")
    if parse_size(triton.get("shm_size", 0)) < MIN_SHM_BYTES:
        out.append(
            f"triton: shm_size {triton.get('shm_size')!r} is too small (>= 1 GB; the python backend uses /dev/shm)"
        )
    if ":8003/readyz" not in json.dumps(triton.get("healthcheck") or {}):
        out.append(
            "triton: the healthcheck must probe the supervisor's :8003/readyz (/v2/health/ready stays 200 "
            "after a model's process died)"
        )
    if not any(str(v).startswith("models:/models") for v in triton.get("volumes", []) or []):
        out.append("triton: must mount the models volume at /models")
    if _depends(services["ui"], "triton") != "service_healthy":
        out.append("ui: must wait for a healthy triton (depends_on condition: service_healthy)")
    if (services["ui"].get("environment") or {}).get("MUSICGEN_TRITON_URL") != "triton:8001":
        out.append("ui: MUSICGEN_TRITON_URL must be triton:8001")
    if services["ui"].get("ports"):
        out.append("ui: must not publish ports (the proxy is the only way in)")
    proxy = services["proxy"]
    if _depends(proxy, "ui") != "service_healthy":
        out.append("proxy: must wait for a healthy ui")
    if not published(proxy):
        out.append("proxy: must publish the page port")
    if not any(":?" in str(v) and "auth" in str(v) for v in proxy.get("volumes", []) or []):
        out.append("proxy: must mount the page auth file, required (${VAR:?...})")
    if not any("Caddyfile" in str(v) for v in proxy.get("volumes", []) or []):
        out.append("proxy: must mount deploy/docker/Caddyfile")
    if sorted(int(p[1]) for p in published(proxy) if p[1].isdigit()) != sorted(OPEN_PORTS):
        out.append(f"proxy: must publish {' and '.join(map(str, OPEN_PORTS))} (HTTPS, and the redirect)")
    if _depends(proxy, "auth") != "service_healthy":
        out.append("proxy: must wait for a healthy auth (the API's token check)")
    auth = services["auth"]
    if not any(":?" in str(v) and "TOKENS" in str(v) and str(v).endswith(":ro") for v in auth.get("volumes", []) or []):
        out.append("auth: must mount the API token hashes read-only, required (${VAR:?...})")
    if auth.get("ports"):
        out.append("auth: must not publish ports (only the proxy asks it)")
    for name in MONITORING:
        svc = services.get(name)
        if svc is None:
            out.append(f"service {name} is missing (compose profile 'monitoring')")
        elif "monitoring" not in (svc.get("profiles") or []):
            out.append(f"{name}: must be behind the 'monitoring' profile")
    export = services.get("export") or {}
    if export:
        if "export" not in (export.get("profiles") or []):
            out.append("export: must be a one-shot behind the 'export' profile (not started by `up`)")
        if export.get("restart", "no") != "no":
            out.append("export: a one-shot must not restart")
        if not any(
            str(v).startswith("models:/models") and not str(v).endswith(":ro") for v in export.get("volumes", [])
        ):
            out.append("export: must write into the models volume")
        env = export.get("environment") or {}
        if interpolate(env.get("MUSICGEN_PRECISION", "")) != "fp16":
            out.append("export: the deployed LM precision must default to fp16")
        if interpolate(env.get("MUSICGEN_CHECKPOINT", "")) != "facebook/musicgen-small":
            out.append("export: the checkpoint must default to facebook/musicgen-small")
    return out


PAGE_AUTH = "import {$MUSICGEN_PAGE_AUTH_FILE:/etc/caddy/auth.caddy}"
API_AUTH = "import api_token"


def check_caddyfile(text: str) -> list[str]:
    """Textual rules; tests/test_secure_api.py runs the same file in the real Caddy."""
    out = []
    if not re.search(r"^\s*https_port \{\$MUSICGEN_HTTPS_PORT:443\}", text, re.MULTILINE):
        out.append("Caddyfile: the site must be served on HTTPS port 443")
    if not re.search(r"^\s*import tls_\{\$MUSICGEN_TLS_MODE:internal\}", text, re.MULTILINE):
        out.append("Caddyfile: the site must pick its TLS (internal CA or ACME) from MUSICGEN_TLS_MODE")
    if re.search(r"^\s*auto_https\s+(off|disable_redirects)", text, re.MULTILINE):
        out.append("Caddyfile: automatic HTTPS and its port-80 redirect must stay on")
    if re.search(r"^\s*(http://)?:80\b", text, re.MULTILINE):
        out.append("Caddyfile: port 80 must only redirect (no site of its own)")
    if PAGE_AUTH not in text:
        out.append("Caddyfile: must import the basic_auth file written by the bootstrap")
    if "reverse_proxy {$MUSICGEN_UI_UPSTREAM:ui:8501}" not in text:
        out.append("Caddyfile: must proxy the page to ui:8501")
    if not re.search(r"forward_auth \{\$MUSICGEN_AUTH_UPSTREAM:auth:9100\} \{\s*uri /check", text):
        out.append("Caddyfile: the API must be checked by forward_auth to auth:9100/check")
    if not re.search(r"reverse_proxy h2c://\{\$MUSICGEN_TRITON_GRPC:triton:8001\}", text):
        out.append("Caddyfile: gRPC must go to triton:8001 over h2c")
    if re.search(r"^\s*log\b", text, re.MULTILINE) or "log_credentials" in text:
        out.append("Caddyfile: no access log (credentials must never reach a log)")
    # every proxied route carries exactly one of the two credentials: page password or API token
    handles = re.findall(r"handle\s*(\S*)\s*\{(.*?)\n\t\}", text, re.DOTALL)
    if len(handles) < 3:
        out.append("Caddyfile: expected handle blocks for gRPC, /v2/* and the page")
    for matcher, body in handles:
        if "reverse_proxy" not in body:
            continue
        creds = (PAGE_AUTH in body) + (API_AUTH in body)
        if creds != 1:
            out.append(
                f"Caddyfile: route {matcher or '(page)'} must require exactly one of the page password and an API token"
            )
        if API_AUTH in body and "header_up -Authorization" not in body:
            out.append(f"Caddyfile: route {matcher} must strip the token before Triton")
        if ("/v2/" in matcher or "@grpc" in matcher) and API_AUTH not in body:
            out.append(f"Caddyfile: the API route {matcher} must require an API token")
    return out


def check_all() -> list[str]:
    return check_compose(load()) + check_caddyfile((DEPLOY_DIR / "docker" / "Caddyfile").read_text())
