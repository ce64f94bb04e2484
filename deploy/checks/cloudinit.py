"""The Terraform user data (cloud-init) against cloud-init's cloud-config schema, plus wiring.

check_cloud_config(text) validates a rendered cloud-config: the `#cloud-config` header, YAML,
the vendored cloud-init JSON schema (schemas/cloud-config-v1.json), top-level keys cloud-init
knows, root-only secret files, the bootstrap delivered byte for byte, and the unit started.
"""

from __future__ import annotations

import base64
import json
import re

import jsonschema
import yaml

from . import BOOTSTRAP, BOOTSTRAP_UNIT, SCHEMAS

SECRET_FILES = {"/etc/musicgen/deploy.env"}  # root-only; the secrets themselves come from OOS
BOOTSTRAP_PATH = "/opt/musicgen/bin/bootstrap.sh"
UNIT_PATH = "/etc/systemd/system/musicgen-bootstrap.service"


def schema() -> dict:
    return json.loads((SCHEMAS / "cloud-config-v1.json").read_text())


def known_top_level_keys(s: dict) -> set[str]:
    keys = set()
    for name, d in s.get("$defs", {}).items():
        if name.startswith("cc_") or name in ("base_config", "reporting_config"):
            keys |= set((d.get("properties") or {}).keys())
    return keys


def _content(entry: dict) -> bytes:
    raw = entry.get("content", "")
    enc = entry.get("encoding", "text")
    if enc in ("b64", "base64"):
        return base64.b64decode(raw)
    return str(raw).encode()


def check_cloud_config(text: str) -> list[str]:
    out: list[str] = []
    if not text.startswith("#cloud-config\n"):
        out.append("user data must start with '#cloud-config'")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return out + [f"user data is not YAML: {exc}"]
    if not isinstance(doc, dict):
        return out + ["user data is not a mapping"]
    s = schema()
    validator = jsonschema.validators.validator_for(s)(s)
    out += [
        f"schema: {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(doc)
    ]
    known = known_top_level_keys(s)
    for key in doc:
        if key not in known:
            out.append(f"unknown cloud-config key {key!r}")
    files = {f.get("path"): f for f in doc.get("write_files", []) or [] if isinstance(f, dict)}
    for path in files:
        if re.search(r"password|token|secret", str(path), re.IGNORECASE):
            out.append(f"{path}: the user data must carry no secret (the instance reads secrets from OOS)")
    for path in SECRET_FILES:
        f = files.get(path)
        if f is None:
            out.append(f"write_files must write {path}")
        elif f.get("permissions") != "0600" or f.get("owner", "root:root") != "root:root":
            out.append(f"{path} must be root:root 0600")
    try:
        if BOOTSTRAP_PATH not in files or _content(files[BOOTSTRAP_PATH]) != BOOTSTRAP.read_bytes():
            out.append(f"{BOOTSTRAP_PATH} must be deploy/host/bootstrap.sh, byte for byte")
        elif files[BOOTSTRAP_PATH].get("permissions") != "0755":
            out.append(f"{BOOTSTRAP_PATH} must be executable (0755)")
        if UNIT_PATH not in files or _content(files[UNIT_PATH]) != BOOTSTRAP_UNIT.read_bytes():
            out.append(f"{UNIT_PATH} must be deploy/host/systemd/musicgen-bootstrap.service")
        env = files.get("/etc/musicgen/deploy.env")
        if env is not None:
            keys = {line.split("=", 1)[0] for line in _content(env).decode().splitlines() if "=" in line}
            from . import bootstrap_setting_keys

            for k in sorted(keys - bootstrap_setting_keys()):
                out.append(f"deploy.env key {k} is unknown to bootstrap.sh")
    except (ValueError, TypeError) as exc:
        out.append(f"write_files content does not decode: {exc}")
    cmds = [" ".join(map(str, c)) if isinstance(c, list) else str(c) for c in doc.get("runcmd", []) or []]
    if not any(re.search(r"systemctl (enable --now|start).*musicgen-bootstrap\.service", c) for c in cmds):
        out.append("runcmd must start musicgen-bootstrap.service")
    if any("--no-block" not in c for c in cmds if "start" in c and "musicgen-bootstrap" in c):
        out.append("runcmd must start the bootstrap with --no-block (cloud-init must not wait an hour)")
    if "set -x" in text:
        out.append("user data must not trace")
    return out


def unit_exec_path() -> str:
    m = re.search(r"^ExecStart=\S*bash -e (\S+)", BOOTSTRAP_UNIT.read_text(), re.M)
    return m.group(1) if m else ""
