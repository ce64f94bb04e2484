"""Secrets on the host: the bootstrap's `secrets` step (OOS secret parameters, by name only) and
`api_tokens` step (the deploy token stored as a SHA-256 hash, or a first token generated into a
root-only file) really run on a fake host; the token tool (deploy/auth/token_auth.py) and the OOS
reader's request signature (deploy/host/oos_secret.py, checked against Alibaba Cloud's documented
example) on their own. No token reaches an output or a log, even under `bash -x`."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from deploy_fakes import REPO

TOKEN_AUTH = REPO / "deploy" / "auth" / "token_auth.py"
TOKEN = "deploy-token-0123456789abcdefghijklmnop"


def _tool(tokens, *args, stdin=None):
    return subprocess.run(
        [sys.executable, str(TOKEN_AUTH), "--tokens", str(tokens), *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def tool_host(secrets):
    secrets.settings["MUSICGEN_TOKEN_TOOL"] = str(TOKEN_AUTH)
    return secrets


def test_dry_run_reads_secrets_from_oos_by_name(tool_host):
    tool_host.password_file.unlink()
    env = tool_host.env_file(
        MUSICGEN_OOS_REGION="cn-hangzhou",
        MUSICGEN_SECRET_PAGE_PASSWORD="musicgen-s1-page-password",
        MUSICGEN_SECRET_API_TOKEN="musicgen-s1-api-token",
    )
    r = tool_host.run("--dry-run", "--only", "secrets,api_tokens", env_file=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--region cn-hangzhou --name musicgen-s1-page-password --out " + str(tool_host.password_file) in r.stdout
    assert "--name musicgen-s1-api-token --out " + str(tool_host.etc / "api-token") in r.stdout
    assert "PLAN api_tokens: generate a first API token" in r.stdout


def test_secrets_already_applied_are_not_fetched_again(tool_host):
    tool_host.password_file.unlink()
    (tool_host.etc / "page-auth.caddy").write_text("basicauth {\n\tmusicgen $2y$12$abc\n}\n")
    (tool_host.etc / "api-tokens").write_text(f"deploy {'0' * 64}\n")
    env = tool_host.env_file(
        MUSICGEN_OOS_REGION="cn-hangzhou", MUSICGEN_SECRET_PAGE_PASSWORD="p", MUSICGEN_SECRET_API_TOKEN="t"
    )
    r = tool_host.run("--dry-run", "--only", "secrets,api_tokens", env_file=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("already applied") == 2 and "oos_secret.py" not in r.stdout
    assert "SKIP api_tokens: API tokens present" in r.stdout


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MUSICGEN_SECRET_API_TOKEN", "x", "need MUSICGEN_OOS_REGION"),
        ("MUSICGEN_SECRET_PAGE_PASSWORD", "a;b", "must be OOS parameter names"),
        ("MUSICGEN_TLS_MODE", "off", "must be internal or acme"),
        ("MUSICGEN_SITE_HOST", "a b", "must be a domain name or an IPv4 address"),
    ],
)
def test_secret_settings_are_validated(tool_host, key, value, message):
    r = tool_host.run("--dry-run", "--only", "secrets", env_file=tool_host.env_file(**{key: value}))
    assert r.returncode != 0 and message in r.stderr


@pytest.mark.parametrize("xtrace", [False, True])
def test_the_deploy_token_is_stored_hashed_and_never_shown(tool_host, xtrace):
    (tool_host.etc / "api-token").write_text(TOKEN + "\n")
    log = tool_host.root / "log" / "bootstrap.log"
    r = tool_host.run("--only", "api_tokens", "--log-file", str(log), xtrace=xtrace)
    assert r.returncode == 0, r.stdout + r.stderr
    tokens = tool_host.etc / "api-tokens"
    assert f"deploy {hashlib.sha256(TOKEN.encode()).hexdigest()}\n" in tokens.read_text()
    assert oct(tokens.stat().st_mode & 0o777) == "0o600"
    for blob in (r.stdout, r.stderr, log.read_text(), tokens.read_text()):
        assert TOKEN not in blob
    before = tokens.read_text()
    assert tool_host.run("--only", "api_tokens").returncode == 0 and tokens.read_text() == before  # idempotent


def test_without_a_deploy_token_one_is_generated_into_a_root_only_file(tool_host):
    r = tool_host.run("--only", "api_tokens")
    assert r.returncode == 0, r.stdout + r.stderr
    first = tool_host.etc / "api-token.first"
    token = first.read_text().strip()
    assert token.startswith("mgt_") and len(token) > 40 and oct(first.stat().st_mode & 0o777) == "0o600"
    assert token not in r.stdout + r.stderr
    assert hashlib.sha256(token.encode()).hexdigest() in (tool_host.etc / "api-tokens").read_text()


def test_token_tool_new_list_revoke_add(tmp_path):
    tokens = tmp_path / "api-tokens"
    a = _tool(tokens, "new", "alice").stdout.strip()
    b = _tool(tokens, "new", "bob").stdout.strip()
    assert a != b and a.startswith("mgt_")
    listed = _tool(tokens, "list").stdout
    assert "alice sha256:" in listed and "bob sha256:" in listed and a not in listed
    rotated = _tool(tokens, "new", "alice").stdout.strip()  # same name: replaces (rotation)
    text = tokens.read_text()
    assert hashlib.sha256(rotated.encode()).hexdigest() in text and hashlib.sha256(a.encode()).hexdigest() not in text
    assert _tool(tokens, "revoke", "bob").returncode == 0 and "bob " not in tokens.read_text()
    assert _tool(tokens, "revoke", "bob").returncode == 1
    assert _tool(tokens, "add", "ci", stdin=TOKEN + "\n").returncode == 0
    assert hashlib.sha256(TOKEN.encode()).hexdigest() in tokens.read_text()
    assert _tool(tokens, "add", "ci", stdin="short\n").returncode == 2
    assert _tool(tokens, "new", "bad name").returncode == 2
    assert _tool(tokens, "hash", stdin=TOKEN + "\n").stdout.strip() == hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text("alice not-a-hash\n")
    r = _tool(tokens, "list")
    assert r.returncode == 1 and ":1: expected 'NAME SHA256-HEX'" in r.stderr


def test_token_store_checks_bearer_headers(tmp_path):
    sys.path.insert(0, str(TOKEN_AUTH.parent))
    try:
        import token_auth
    finally:
        sys.path.pop(0)
    tokens = tmp_path / "t"
    token_auth.write_tokens(tokens, {"ci": token_auth.token_hash(TOKEN)})
    store = token_auth.TokenStore(tokens)
    assert store.valid(f"Bearer {TOKEN}") and store.valid(f"bearer  {TOKEN} ")
    for bad in (None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN):
        assert not store.valid(bad), bad


def test_oos_request_signature_matches_the_documented_example():
    sys.path.insert(0, str(REPO / "deploy" / "host"))
    try:
        import oos_secret
    finally:
        sys.path.pop(0)
    # Alibaba Cloud's RPC signature example (AccessKeySecret "testsecret")
    params = {
        "Timestamp": "2016-02-23T12:46:24Z",
        "Format": "XML",
        "AccessKeyId": "testid",
        "Action": "DescribeRegions",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
        "Version": "2014-05-26",
        "SignatureVersion": "1.0",
    }
    assert oos_secret.sign(params, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    assert oos_secret.percent("a b*~/") == "a%20b%2A~%2F"
