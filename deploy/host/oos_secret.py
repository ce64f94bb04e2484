#!/usr/bin/env python3
"""Read one OOS encrypted parameter (a secret: page password, API token) into a root-only file.

    oos_secret.py --region cn-hangzhou --name musicgen-xxxx-page-password --out /etc/musicgen/page-password

Run on the instance by bootstrap.sh. Credentials are the instance RAM role's temporary STS keys
from the metadata service (the role may read only this deployment's secret parameters); the call
is OOS `GetSecretParameter` with `WithDecryption=true`, signed with Alibaba Cloud's RPC signature
(HMAC-SHA1, version 1.0). The secret goes only into --out (mode 0600); nothing is printed but the
parameter's name. Standard library only (the host's python3, 3.10 on Ubuntu 22.04).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

METADATA = "http://100.100.100.200/latest/meta-data/ram/security-credentials/"
OOS_VERSION = "2019-06-01"


def percent(s: str) -> str:
    """RFC 3986 encoding as the RPC signature wants it (space %20, '*' %2A, '~' kept)."""
    return urllib.parse.quote(str(s), safe="-_.~")


def sign(params: dict, secret: str, method: str = "GET") -> str:
    """The RPC signature (v1.0) of `params` (every query parameter but Signature)."""
    canonical = "&".join(f"{percent(k)}={percent(v)}" for k, v in sorted(params.items()))
    to_sign = f"{method}&{percent('/')}&{percent(canonical)}"
    digest = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def role_credentials(metadata: str = METADATA) -> dict:
    """The instance RAM role's STS credentials: {AccessKeyId, AccessKeySecret, SecurityToken}."""
    role = _get(metadata).decode().strip().splitlines()
    if not role or not role[0]:
        raise RuntimeError("the instance has no RAM role: the template attaches one that may read the secrets")
    creds = json.loads(_get(metadata + role[0]))
    if creds.get("Code") not in (None, "Success"):
        raise RuntimeError(f"the metadata service refused the role's credentials ({creds.get('Code')})")
    return creds


def get_secret_parameter(region: str, name: str, creds: dict, endpoint: str | None = None) -> str:
    params = {
        "Action": "GetSecretParameter",
        "Version": OOS_VERSION,
        "Format": "JSON",
        "RegionId": region,
        "Name": name,
        "WithDecryption": "true",
        "AccessKeyId": creds["AccessKeyId"],
        "SignatureMethod": "HMAC-SHA1",
        "SignatureVersion": "1.0",
        "SignatureNonce": uuid.uuid4().hex,
        "Timestamp": datetime.datetime.now(datetime.timezone.utc),  # noqa: UP017 - runs on Python 3.10.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if creds.get("SecurityToken"):
        params["SecurityToken"] = creds["SecurityToken"]
    params["Signature"] = sign(params, creds["AccessKeySecret"])
    url = f"{endpoint or f'https://oos.{region}.aliyuncs.com'}/?{urllib.parse.urlencode(params)}"
    try:
        body = json.loads(_get(url, timeout=20))
    except urllib.error.HTTPError as exc:  # the error body names the code (Forbidden.RAM, EntityNotExists...)
        try:
            code = json.loads(exc.read()).get("Code", exc.code)
        except ValueError:
            code = exc.code
        raise RuntimeError(f"OOS refused GetSecretParameter for {name}: {code}") from None
    value = (body.get("Parameter") or {}).get("Value")
    if not value:
        raise RuntimeError(f"OOS returned no value for {name}")
    return value


def write_private(path: str, value: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--region", required=True)
    ap.add_argument("--name", required=True, help="the OOS secret parameter's name")
    ap.add_argument("--out", required=True, help="file to write the secret to (mode 0600)")
    args = ap.parse_args(argv)
    try:
        value = get_secret_parameter(args.region, args.name, role_credentials())
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        print(f"oos_secret: {exc}", file=sys.stderr)
        return 1
    write_private(args.out, value)
    print(f"oos_secret: {args.name} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
