"""deploy/compose.yaml validates against the Compose Specification and the stack's rules; the
checker catches broken copies. Also the Caddyfile (the page's only door)."""

from __future__ import annotations

import copy

import pytest

from deploy.checks import DEPLOY_DIR, compose


@pytest.fixture(scope="module")
def doc():
    return compose.load()


def test_compose_file_passes(doc):
    assert compose.check_compose(doc) == []


def test_caddyfile_passes():
    assert compose.check_caddyfile((DEPLOY_DIR / "docker" / "Caddyfile").read_text()) == []


def test_only_the_proxy_is_published(doc):
    pub = {name: compose.published(svc) for name, svc in doc["services"].items()}
    assert sorted(pub["proxy"]) == [("0.0.0.0", "443", "443"), ("0.0.0.0", "80", "80")]
    assert {p[0] for p in pub["triton"]} == {"127.0.0.1"} and {p[2] for p in pub["triton"]} == {
        "8000",
        "8001",
        "8002",
        "8003",
    }
    assert pub["ui"] == [] and pub["export"] == [] and pub["auth"] == [] and pub["grafana"] == []
    assert pub["prometheus"] == [("127.0.0.1", "9090", "9090")]


MUTATIONS = [
    (lambda d: d["services"]["triton"].pop("deploy"), "needs a GPU reservation"),
    (
        lambda d: d["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"][0].update(
            capabilities=["utility"]
        ),
        "needs a GPU reservation",
    ),
    (lambda d: d["services"]["triton"].update(shm_size="64m"), "shm_size '64m' is too small"),
    (lambda d: d["services"]["triton"].pop("shm_size"), "is too small"),
    (lambda d: d["services"]["triton"].pop("healthcheck"), "triton: needs a healthcheck"),
    (
        lambda d: d["services"]["triton"]["healthcheck"].update(test=["CMD", "true"]),
        "must probe the supervisor's :8003/readyz",
    ),
    (lambda d: d["services"]["triton"].update(restart="no"), "triton: restart policy"),
    (lambda d: d["services"]["triton"]["ports"].append("8000:8000"), "triton publishes port 8000 on 0.0.0.0"),
    (
        lambda d: d["services"]["triton"].update(ports=[{"target": 8001, "published": 8001}]),
        "triton publishes port 8001 on 0.0.0.0",
    ),
    (lambda d: d["services"]["ui"].update(depends_on=["triton"]), "must wait for a healthy triton"),
    (lambda d: d["services"]["ui"].update(ports=["8501:8501"]), "ui publishes port 8501"),
    (lambda d: d["services"]["ui"]["environment"].update(MUSICGEN_TRITON_URL="localhost:8001"), "MUSICGEN_TRITON_URL"),
    (lambda d: d["services"]["proxy"]["ports"].append("8443:443"), "proxy publishes 0.0.0.0:8443->443"),
    (lambda d: d["services"]["proxy"]["ports"].append("8000:8000"), "proxy publishes 0.0.0.0:8000->8000"),
    (lambda d: d["services"]["proxy"]["ports"].pop(0), "proxy: must publish 443 and 80"),
    (lambda d: d["services"]["proxy"]["depends_on"].pop("auth"), "must wait for a healthy auth"),
    (
        lambda d: d["services"]["auth"].update(volumes=["./auth/token_auth.py:/app/token_auth.py:ro"]),
        "must mount the API token hashes",
    ),
    (lambda d: d["services"]["auth"].update(ports=["9100:9100"]), "auth publishes port 9100"),
    (lambda d: d["services"]["auth"].pop("healthcheck"), "auth: needs a healthcheck"),
    (lambda d: d["services"]["grafana"].pop("profiles"), "grafana: must be behind the 'monitoring' profile"),
    (lambda d: d["services"]["prometheus"].update(ports=["9090:9090"]), "prometheus publishes port 9090 on 0.0.0.0"),
    (lambda d: d["services"]["auth"].update(environment={"API_TOKEN": "x"}), "looks like a secret"),
    (
        lambda d: d["services"]["proxy"].update(volumes=["./docker/Caddyfile:/etc/caddy/Caddyfile:ro"]),
        "must mount the page auth file",
    ),
    (lambda d: d["services"]["proxy"].pop("depends_on"), "proxy: must wait for a healthy ui"),
    (lambda d: d["services"]["ui"]["environment"].update(PAGE_PASSWORD="x"), "looks like a secret"),
    (lambda d: d["services"]["export"].pop("profiles"), "one-shot behind the 'export' profile"),
    (lambda d: d["services"]["export"].update(restart="always"), "a one-shot must not restart"),
    (lambda d: d["services"]["export"]["environment"].update(MUSICGEN_PRECISION="fp32"), "default to fp16"),
    (lambda d: d["services"]["ui"].update(privileged=True), "privileged containers"),
    (lambda d: d["services"]["ui"].update(network_mode="host"), "host networking"),
    (lambda d: d["services"]["ui"].update(helthcheck={}), "schema: services/ui"),
    (lambda d: d["services"]["triton"]["build"].update(dockerfile="deploy/docker/nope.Dockerfile"), "does not exist"),
    (lambda d: d["services"].pop("proxy"), "service proxy is missing"),
]


@pytest.mark.parametrize("mutate, expected", MUTATIONS, ids=[m[1][:40] for m in MUTATIONS])
def test_checker_catches(doc, mutate, expected):
    broken = copy.deepcopy(doc)
    mutate(broken)
    findings = compose.check_compose(broken)
    assert any(expected in f for f in findings), f"{expected!r} not in {findings}"


PAGE_IMPORT = "\t\timport {$MUSICGEN_PAGE_AUTH_FILE:/etc/caddy/auth.caddy}\n"
CADDY_MUTATIONS = [
    (PAGE_IMPORT, "", "must import the basic_auth file"),
    (PAGE_IMPORT, "", "route (page) must require exactly one"),
    ("\t\timport api_token\n", "", "must require an API token"),
    ("\t\timport api_token\n", PAGE_IMPORT, "must require an API token"),
    ("\t\timport api_token\n", "\t\timport api_token\n" + PAGE_IMPORT, "exactly one of the page password"),
    ("\t\t\theader_up -Authorization\n", "", "must strip the token"),
    ("\timport tls_{$MUSICGEN_TLS_MODE:internal}", "\ttls off", "pick its TLS"),
    ("\tadmin off\n", "\tadmin off\n\tauto_https off\n", "automatic HTTPS and its port-80 redirect"),
    ("https_port {$MUSICGEN_HTTPS_PORT:443}", "https_port 8443", "served on HTTPS port 443"),
    ("# unauthenticated liveness", ":80 {\n\trespond ok\n}\n# unauthenticated liveness", "port 80 must only redirect"),
    (
        "\timport tls_{$MUSICGEN_TLS_MODE:internal}\n",
        "\timport tls_{$MUSICGEN_TLS_MODE:internal}\n\tlog\n",
        "no access log",
    ),
    ("reverse_proxy {$MUSICGEN_UI_UPSTREAM:ui:8501}", "reverse_proxy triton:8000", "must proxy the page to ui:8501"),
    ("uri /check", "uri /", "forward_auth to auth:9100/check"),
    ("h2c://{$MUSICGEN_TRITON_GRPC:triton:8001}", "{$MUSICGEN_TRITON_GRPC:triton:8001}", "over h2c"),
]


@pytest.mark.parametrize("old, new, expected", CADDY_MUTATIONS, ids=[m[2][:30] for m in CADDY_MUTATIONS])
def test_caddy_checker_catches(old, new, expected):
    text = (DEPLOY_DIR / "docker" / "Caddyfile").read_text()
    assert old in text
    findings = compose.check_caddyfile(text.replace(old, new))
    assert any(expected in f for f in findings), f"{expected!r} not in {findings}"


def test_size_and_interpolation_helpers():
    assert compose.parse_size("2gb") == 2 << 30 and compose.parse_size("512m") == 512 << 20
    assert compose.interpolate("${A:-80}:80") == "80:80" and compose.interpolate("${B:?need B}") == "set"
