"""Static checks of deploy/terraform (no provider download, no cloud: `terraform validate` needs both).

parse_dir() parses every *.tf with python-hcl2 (a syntax error fails the check) and returns a
normalised model; check_config(model) returns findings for:
- references: every var.*, local.*, data.*.* and resource reference is declared; every variable
  is used; files read through file()/filebase64()/templatefile() exist; the cloud-init template's
  placeholders equal the keys templatefile() passes;
- provider pinning (source aliyun/alicloud, bounded version) and required_version;
- security: the only ingress rules are TCP 443 and 80 from var.page_access_cidr; no 0.0.0.0/0
  anywhere; secrets are sensitive, have no default and never reach an output;
- secrets: the page password and the API token go only into alicloud_oos_secret_parameter values
  (never into the user data, locals or command content); the instance's RAM role may read
  exactly those secret parameters;
- the product table: the same parameter defaults and ranges as the ROS template, checked by
  running the validation regexes against good and bad values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import hcl2

from . import DEPLOY_DIR, OPEN_PORTS, TERRAFORM_DIR
from .ros import INSTANCE_TYPES_BAD, INSTANCE_TYPES_GOOD, PASSWORDS_BAD, PASSWORDS_GOOD

REQUIRED_VARIABLES = {
    "region",
    "name",
    "zone_id",
    "pay_type",
    "pay_period",
    "vpc_cidr",
    "vswitch_cidr",
    "instance_type",
    "system_disk_size",
    "instance_password",
    "checkpoint",
    "page_access_cidr",
    "page_password",
    "api_token",
    "domain_name",
    "source_repository_url",
    "source_ref",
}
SENSITIVE = {"instance_password", "page_password", "api_token"}
OOS_SECRETS = SENSITIVE - {"instance_password"}  # travel only as OOS secret parameters
TABLE_DEFAULTS = {
    "system_disk_size": 100,
    "pay_type": "PostPaid",
    "checkpoint": "facebook/musicgen-small",
    "instance_type": "ecs.gn7i-c8g1.2xlarge",
}
BUILTIN_PREFIXES = {"var", "local", "data", "path", "module", "each", "count", "self", "terraform"}


class ParseError(RuntimeError):
    pass


def _unquote(s):
    if isinstance(s, str) and len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return s[1:-1]
    return s


def _norm(node):
    if isinstance(node, dict):
        return {_unquote(k): _norm(v) for k, v in node.items() if not str(k).startswith("__")}
    if isinstance(node, list):
        return [_norm(v) for v in node]
    return _unquote(node)


def parse_dir(path: Path = TERRAFORM_DIR) -> dict:
    """{'variable': {name: body}, 'resource': {'type.name': body}, 'data': {...}, 'output': {...},
    'locals': {...}, 'terraform': [...], 'provider': {...}, 'files': {filename: text}}"""
    model = {
        "variable": {},
        "resource": {},
        "data": {},
        "output": {},
        "locals": {},
        "terraform": [],
        "provider": {},
        "files": {},
        "dir": str(path),
    }
    tf_files = sorted(Path(path).glob("*.tf"))
    if not tf_files:
        raise ParseError(f"no .tf files in {path}")
    for f in tf_files:
        text = f.read_text()
        model["files"][f.name] = text
        try:
            doc = _norm(hcl2.loads(text))
        except Exception as exc:  # python-hcl2 raises lark errors of several kinds
            raise ParseError(f"{f.name}: HCL does not parse: {exc}") from None
        for block in doc.get("variable", []):
            model["variable"].update(block)
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for rname, body in named.items():
                        model[kind][f"{rtype}.{rname}"] = body
        for block in doc.get("output", []):
            model["output"].update(block)
        for block in doc.get("locals", []):
            model["locals"].update(block)
        for block in doc.get("provider", []):
            model["provider"].update(block)
        model["terraform"] += doc.get("terraform", [])
    return model


def _dump(node) -> str:
    return json.dumps(node)


def _strings(node) -> str:
    """Every string value inside node (not the keys), one per line."""
    if isinstance(node, dict):
        return "\n".join(_strings(v) for v in node.values())
    if isinstance(node, list):
        return "\n".join(_strings(v) for v in node)
    return str(node)


def _refs(node) -> dict[str, set]:
    text = _strings(node)
    refs = {
        "var": set(re.findall(r"\bvar\.([A-Za-z_][\w-]*)", text)),
        "local": set(re.findall(r"\blocal\.([A-Za-z_][\w-]*)", text)),
        "data": {f"{a}.{b}" for a, b in re.findall(r"\bdata\.([a-z][\w]*)\.([A-Za-z_][\w-]*)", text)},
        "resource": set(),
    }
    for a, b in re.findall(r"(?<![\w.])([a-z][a-z0-9]*_[\w]+)\.([A-Za-z_][\w-]*)", text):
        if a.split("_", 1)[0] not in BUILTIN_PREFIXES and a.startswith("alicloud_"):
            refs["resource"].add(f"{a}.{b}")
    return refs


def _hcl_literals(expr: str) -> list[str]:
    """String literals inside an HCL expression, with HCL escapes undone."""
    lits = re.findall(r'"((?:[^"\\]|\\.)*)"', expr)
    return [re.sub(r"\\(.)", r"\1", s) for s in lits]


def _validations(var: dict) -> list[str]:
    return [v.get("condition", "") for v in var.get("validation", []) or []]


def check_config(model: dict) -> list[str]:
    out: list[str] = []
    variables, resources, data, outputs, local = (
        model["variable"],
        model["resource"],
        model["data"],
        model["output"],
        model["locals"],
    )
    # references
    everything = {
        "resource": resources,
        "data": data,
        "output": outputs,
        "locals": local,
        "provider": model["provider"],
        "variable": {k: v.get("validation") for k, v in variables.items()},
    }
    refs = _refs(everything)
    for v in sorted(refs["var"] - set(variables)):
        out.append(f"var.{v} is referenced but not declared")
    for v in sorted(set(variables) - refs["var"]):
        out.append(f"variable {v} is declared but never used")
    for v in sorted(refs["local"] - set(local)):
        out.append(f"local.{v} is referenced but not defined")
    for v in sorted(refs["data"] - set(data)):
        out.append(f"data.{v} is referenced but not declared")
    for v in sorted(refs["resource"] - set(resources)):
        out.append(f"{v} is referenced but not declared")
    # files read by the configuration
    text = _strings(everything)
    for rel in re.findall(r"\$\{path\.module\}/([^\"\\)]+)", text):
        if not (Path(model["dir"]) / rel).exists():
            out.append(f"file {rel} (relative to the module) does not exist")
    # templatefile placeholders vs passed keys
    values = _strings(everything)
    for m in re.finditer(r'templatefile\("\$\{path\.module\}/([^"]+)",\s*\{', values):
        depth, i = 1, m.end()
        while depth and i < len(values):
            depth += {"{": 1, "}": -1}.get(values[i], 0)
            i += 1
        body = values[m.end() : i - 1]
        flat = re.sub(r"\$\{[^}]*\}", "", body)
        passed = set(re.findall(r"([A-Za-z_]\w*)\s*=", flat))
        tpl = Path(model["dir"]) / m.group(1)
        if tpl.exists():
            used = set(re.findall(r"\$\{([A-Za-z_]\w*)\}", tpl.read_text()))
            for k in sorted(used - passed):
                out.append(f"{m.group(1)} uses ${{{k}}} but templatefile() does not pass it")
            for k in sorted(passed - used):
                out.append(f"templatefile() passes {k} but {m.group(1)} never uses it")
            if re.search(r"%\{", tpl.read_text()):
                out.append(f"{m.group(1)} uses template directives; keep it to plain ${{...}} values")
    # provider pinning
    req = {}
    for block in model["terraform"]:
        for rp in block.get("required_providers", []) or []:
            req.update(rp)
        if not block.get("required_version"):
            out.append("terraform.required_version is not set")
    ali = req.get("alicloud") or {}
    if ali.get("source") != "aliyun/alicloud":
        out.append("required_providers.alicloud.source must be aliyun/alicloud")
    if "<" not in str(ali.get("version", "")) and "~>" not in str(ali.get("version", "")):
        out.append("required_providers.alicloud.version needs an upper bound")
    # variables: presence, secrets, table
    for v in sorted(REQUIRED_VARIABLES - set(variables)):
        out.append(f"variable {v} is missing (the template exposes it)")
    for v in SENSITIVE:
        body = variables.get(v) or {}
        if body.get("sensitive") is not True:
            out.append(f"variable {v} must be sensitive = true")
        if "default" in body:
            out.append(f"variable {v} must have no default")
    for name, want in TABLE_DEFAULTS.items():
        got = (variables.get(name) or {}).get("default")
        if got != want:
            out.append(f"variable {name} default is {got!r}, the product table says {want!r}")
    disk = " ".join(_validations(variables.get("system_disk_size") or {}))
    if ">= 60" not in disk or "<= 500" not in disk:
        out.append("variable system_disk_size must be validated to 60-500")
    pay = " ".join(_validations(variables.get("pay_type") or {}))
    if not all(f'"{v}"' in pay for v in ("PostPaid", "PrePaid")):
        out.append("variable pay_type must be validated to PostPaid / PrePaid")
    it_lits = [s for c in _validations(variables.get("instance_type") or {}) for s in _hcl_literals(c)]
    if not it_lits:
        out.append("variable instance_type needs a regex validation")
    else:
        pat = it_lits[0]
        out += [f"instance_type validation rejects {t}" for t in INSTANCE_TYPES_GOOD if not re.search(pat, t)]
        out += [f"instance_type validation admits {t}" for t in INSTANCE_TYPES_BAD if re.search(pat, t)]
    pw_lits = [s for c in _validations(variables.get("instance_password") or {}) for s in _hcl_literals(c)]
    if len(pw_lits) < 4:
        out.append("variable instance_password needs the cloud's complexity rule (charset + >= 3 classes)")
    else:
        allowed, classes = pw_lits[0], pw_lits[1:]

        def ok(p):
            return re.search(allowed, p) is not None and sum(re.search(c, p) is not None for c in classes) >= 3

        out += [f"instance_password validation rejects a valid password {p!r}" for p in PASSWORDS_GOOD if not ok(p)]
        out += [f"instance_password validation admits a weak password {p!r}" for p in PASSWORDS_BAD if ok(p)]
    # outputs must not expose secrets
    for name, body in outputs.items():
        leaked = _refs(body)["var"] & SENSITIVE
        if leaked:
            out.append(f"output {name} exposes {sorted(leaked)}")
    # security: only HTTPS and its redirect from the page CIDR
    rules = {k: v for k, v in resources.items() if k.startswith("alicloud_security_group_rule.")}
    allowed = {f"{p}/{p}" for p in OPEN_PORTS}
    for want in sorted(allowed - {r.get("port_range") for r in rules.values() if r.get("type") == "ingress"}):
        out.append(f"no alicloud_security_group_rule opens {want}: HTTPS (443) and its redirect (80) must be reachable")
    for name, r in rules.items():
        if r.get("type") != "ingress":
            continue
        if r.get("ip_protocol") != "tcp":
            out.append(f"{name}: protocol {r.get('ip_protocol')!r}; only tcp to the page")
        if r.get("port_range") not in allowed:
            out.append(f"{name}: opens {r.get('port_range')!r}; only {' and '.join(sorted(allowed))} may be open")
        if r.get("cidr_ip") != "${var.page_access_cidr}":
            out.append(f"{name}: source must be var.page_access_cidr, not {r.get('cidr_ip')!r}")
    for k, r in resources.items():
        if k.startswith("alicloud_security_group.") and ("ingress" in r or "rules" in r):
            out.append(f"{k}: define ingress only through alicloud_security_group_rule")
    if "0.0.0.0/0" in _dump(resources):
        out.append("a resource opens 0.0.0.0/0")
    # the host wiring
    inst = [v for k, v in resources.items() if k.startswith("alicloud_instance.")]
    if len(inst) != 1:
        out.append(f"expected one alicloud_instance, found {len(inst)}")
    else:
        i = inst[0]
        for key, want in (
            ("instance_type", "${var.instance_type}"),
            ("availability_zone", "${var.zone_id}"),
            ("system_disk_size", "${var.system_disk_size}"),
            ("password", "${var.instance_password}"),
            ("system_disk_category", "cloud_essd"),
            ("instance_charge_type", "${var.pay_type}"),
        ):
            if i.get(key) != want:
                out.append(f"alicloud_instance.{key} must be {want}, is {i.get(key)!r}")
        if "user_data" not in i:
            out.append("alicloud_instance needs the cloud-init user_data that runs the bootstrap")
    inv = [v for k, v in resources.items() if k.startswith("alicloud_ecs_invocation.")]
    cmd = [v for k, v in resources.items() if k.startswith("alicloud_ecs_command.")]
    if len(inv) != 1 or len(cmd) != 1 or "wait-ready.sh" not in _dump(cmd):
        out.append(
            "Terraform must wait for readiness: one alicloud_ecs_command running host/wait-ready.sh "
            "and one alicloud_ecs_invocation of it"
        )
    endpoint = (outputs.get("endpoint") or {}).get("value", "")
    if not (str(endpoint).startswith("https://") and "public_ip" in str(endpoint)):
        out.append("output endpoint must be https://<domain or public ip>/")
    out += check_secrets(model)
    return out


def check_secrets(model: dict) -> list[str]:
    """The page password and the API token only as OOS secret parameters, read through the role."""
    out: list[str] = []
    resources, local = model["resource"], model["locals"]
    holders = {k: v for k, v in resources.items() if k.startswith("alicloud_oos_secret_parameter.")}
    held = {_refs(v.get("value", ""))["var"].pop() for v in holders.values() if _refs(v.get("value", ""))["var"]}
    for v in sorted(OOS_SECRETS - held):
        out.append(f"var.{v} must be the value of an alicloud_oos_secret_parameter (never user data)")
    for k, v in holders.items():
        if v.get("type") != "Secret":
            out.append(f"{k}: type must be Secret (encrypted)")
    for name, value in local.items():
        for v in sorted(_refs(value)["var"] & SENSITIVE):
            out.append(f"local.{name} reads secret var.{v}: it would reach the user data; pass it through OOS")
    for k, body in resources.items():
        if k in holders:
            continue
        leaked = _refs(body)["var"] & SENSITIVE
        if k.startswith("alicloud_instance."):
            leaked -= {"instance_password"} if body.get("password") == "${var.instance_password}" else set()
            leaked |= _refs(body.get("user_data", ""))["var"] & SENSITIVE
        for v in sorted(leaked):
            out.append(f"{k} reads secret var.{v}; only its alicloud_oos_secret_parameter may")
    # the instance's role reads exactly those parameters
    inst = [v for k, v in resources.items() if k.startswith("alicloud_instance.")]
    role = re.fullmatch(r"\$\{(alicloud_ram_role\.[\w-]+)\.name\}", str(inst[0].get("role_name", ""))) if inst else None
    if not role or role.group(1) not in resources:
        out.append("alicloud_instance.role_name must be the name of the configuration's alicloud_ram_role")
        return out
    policies = {k: v for k, v in resources.items() if k.startswith("alicloud_ram_policy.")}
    attached = [
        v
        for k, v in resources.items()
        if k.startswith("alicloud_ram_role_policy_attachment.") and v.get("role_name") == f"${{{role.group(1)}.name}}"
    ]
    if not attached:
        out.append(f"no policy is attached to {role.group(1)}: the instance could not read its secrets")
    granted = set()
    for a in attached:
        m = re.fullmatch(r"\$\{(alicloud_ram_policy\.[\w-]+)\.policy_name\}", str(a.get("policy_name", "")))
        doc = str((policies.get(m.group(1)) if m else {} or {}).get("policy_document", ""))
        actions = [a for lst in re.findall(r"Action\W*=\s*\[([^\]]*)\]", doc) for a in _hcl_literals(lst)]
        for action in actions:
            if action.startswith("oos:") and action != "oos:GetSecretParameter":
                out.append(f"{m.group(1)}: action {action} is more than reading a secret parameter")
            elif not action.startswith(("oos:", "kms:")):
                out.append(f"{m.group(1)}: action {action} is not needed to read the secrets")
        for arn in re.findall(r"secretparameter/([^\"]*)", doc):
            ref = re.fullmatch(r"\$\{(alicloud_oos_secret_parameter\.[\w-]+)\.secret_parameter_name\}", arn)
            if not ref or ref.group(1) not in holders:
                out.append(
                    f"{m.group(1)}: grants secretparameter/{arn}, not one of the configuration's secret parameters"
                )
            else:
                granted.add(ref.group(1))
    for h in sorted(set(holders) - granted):
        out.append(f"the instance role cannot read {h}")
    return out


def check_all(path: Path = TERRAFORM_DIR) -> list[str]:
    try:
        return check_config(parse_dir(path))
    except ParseError as exc:
        return [str(exc)]


def render_cloud_init(values: dict | None = None) -> str:
    """The cloud-init user data as main.tf renders it, with the real bootstrap and sample settings."""
    import base64

    tpl = (TERRAFORM_DIR / "cloud-init.yaml.tftpl").read_text()
    env = "MUSICGEN_CHECKPOINT=facebook/musicgen-small\nMUSICGEN_SOURCE_REPO=https://example.invalid/m.git\n"
    sample = {
        "deploy_env_b64": base64.b64encode(env.encode()).decode(),
        "bootstrap_b64": base64.b64encode((DEPLOY_DIR / "host" / "bootstrap.sh").read_bytes()).decode(),
        "unit_b64": base64.b64encode(
            (DEPLOY_DIR / "host" / "systemd" / "musicgen-bootstrap.service").read_bytes()
        ).decode(),
    }
    sample.update(values or {})
    return re.sub(r"\$\{([A-Za-z_]\w*)\}", lambda m: sample[m.group(1)], tpl)
