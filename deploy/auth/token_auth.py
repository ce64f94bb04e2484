#!/usr/bin/env python3
"""API tokens for the deployed host: the check behind Caddy's `forward_auth`, and their rotation.

    token_auth.py serve  --tokens FILE [--listen 127.0.0.1:9100]
    token_auth.py new    --tokens FILE NAME     # prints a new token ONCE, stores only its hash
    token_auth.py add    --tokens FILE NAME < token  # stores the hash of a token you chose (deploy parameter)
    token_auth.py revoke --tokens FILE NAME
    token_auth.py list   --tokens FILE          # names and hash prefixes, never tokens

The tokens file holds one `NAME SHA256-HEX` line per token (`#` comments). A token is 32 random
bytes (urlsafe base64) with the prefix `mgt_`: with that much entropy an unsalted SHA-256 is a
sound one-way store (nothing to brute-force), and it keeps the check a constant-cost lookup.
`serve` answers GET /check with 200 when the request's `Authorization: Bearer <token>` hashes to
a line of the file, else 401 (with `WWW-Authenticate: Bearer`); it rereads the file when it
changes, so `new`/`revoke` take effect without a restart. No token or header is ever logged.

Standard library only: it runs with the host's python3 (3.10) and in a stock python image.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOKEN_PREFIX = "mgt_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def read_tokens(path: Path) -> dict[str, str]:
    """{name: sha256 hex} from the tokens file; malformed lines are refused with their line number."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not NAME_RE.match(parts[0]) or not HASH_RE.match(parts[1]):
            raise ValueError(f"{path}:{n}: expected 'NAME SHA256-HEX'")
        out[parts[0]] = parts[1]
    return out


def write_tokens(path: Path, tokens: dict[str, str]) -> None:
    """Replace the file atomically, readable by its owner only (the proxy's auth service reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# MusicGen API tokens: NAME SHA256(token). Managed by deploy/auth/token_auth.py.\n")
        for name, digest in sorted(tokens.items()):
            f.write(f"{name} {digest}\n")
    os.replace(tmp, path)


class TokenStore:
    """The hashes of the tokens file, reloaded when the file's mtime or size changes."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple | None = None
        self._hashes: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def _reload(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                self._hashes = frozenset(read_tokens(self.path).values())
            except (OSError, ValueError) as exc:  # keep the last good set; say why once per change
                print(f"token_auth: cannot read the tokens file: {exc}", file=sys.stderr, flush=True)
            self._stamp = stamp

    def valid(self, authorization: str | None) -> bool:
        self._reload()
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        digest = token_hash(token.strip())
        # constant time per candidate; the set is tiny (a few tokens)
        return any(hmac.compare_digest(digest, h) for h in self._hashes)


def make_handler(store: TokenStore):
    class Handler(BaseHTTPRequestHandler):
        server_version = "token-auth"
        sys_version = ""

        def do_GET(self):
            if self.path.split("?", 1)[0] == "/healthz":
                return self._answer(200, b"ok\n")
            if self.path.split("?", 1)[0] != "/check":
                return self._answer(404, b"not found\n")
            if store.valid(self.headers.get("Authorization")):
                return self._answer(200, b"")
            # JSON like Triton's own errors, so its HTTP client shows the message
            return self._answer(
                401,
                b'{"error": "a valid API token is required (Authorization: Bearer <token>)"}',
                {"WWW-Authenticate": 'Bearer realm="musicgen"', "Content-Type": "application/json"},
            )

        def _answer(self, code: int, body: bytes, headers: dict | None = None):
            self.send_response(code)
            headers = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # no access log: requests carry tokens
            pass

    return Handler


def serve(tokens: Path, listen: str) -> None:
    host, _, port = listen.rpartition(":")
    server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), make_handler(TokenStore(tokens)))
    print(f"token_auth: checking bearer tokens against {tokens} on {listen}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="token_auth.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tokens",
        type=Path,
        default=Path(os.environ.get("MUSICGEN_API_TOKENS_FILE", "/etc/musicgen/api-tokens")),
        help="the tokens file (default $MUSICGEN_API_TOKENS_FILE or /etc/musicgen/api-tokens)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="answer Caddy's forward_auth checks")
    s.add_argument("--listen", default="127.0.0.1:9100", help="host:port (default 127.0.0.1:9100)")
    for cmd, text in (
        ("new", "create (or replace) the token NAME; prints it once"),
        ("revoke", "delete the token NAME"),
    ):
        c = sub.add_parser(cmd, help=text)
        c.add_argument("name", help="a label for the token's holder, e.g. alice-laptop")
    c = sub.add_parser("add", help="store the hash of a token read from stdin as NAME")
    c.add_argument("name")
    sub.add_parser("list", help="token names and hash prefixes")
    sub.add_parser("hash", help="read one token from stdin, print its SHA-256 (for a tokens file line)")
    args = p.parse_args(argv)
    if args.command == "serve":
        serve(args.tokens, args.listen)
        return 0
    if args.command == "hash":
        token = sys.stdin.readline().strip()
        if not token:
            print("token_auth: no token on stdin", file=sys.stderr)
            return 2
        print(token_hash(token))
        return 0
    try:
        tokens = read_tokens(args.tokens)
    except ValueError as exc:
        print(f"token_auth: {exc}", file=sys.stderr)
        return 1
    if args.command == "list":
        for name, digest in sorted(tokens.items()):
            print(f"{name} sha256:{digest[:12]}…")
        return 0
    if not NAME_RE.match(args.name):
        print("token_auth: NAME must be 1-64 of letters, digits, '.', '_', '-'", file=sys.stderr)
        return 2
    if args.command == "revoke":
        if tokens.pop(args.name, None) is None:
            print(f"token_auth: no token named {args.name}", file=sys.stderr)
            return 1
        write_tokens(args.tokens, tokens)
        print(f"revoked {args.name}")
        return 0
    if args.command == "add":
        token = sys.stdin.readline().strip()
        if len(token) < 20 or any(c.isspace() for c in token):
            print("token_auth: the token on stdin must be at least 20 characters without spaces", file=sys.stderr)
            return 2
        if tokens.get(args.name) != token_hash(token):
            tokens[args.name] = token_hash(token)
            write_tokens(args.tokens, tokens)
        print(f"stored the hash of {args.name}")
        return 0
    token = new_token()
    tokens[args.name] = token_hash(token)
    write_tokens(args.tokens, tokens)
    print(token)  # the only time the token exists outside its holder's hands
    return 0


if __name__ == "__main__":
    sys.exit(main())
