"""Internal consistency of the Compute Nest ROS template (cfn-lint rejects ROS templates).

check_template(doc) returns findings for:
- structure: format version, known sections, known resource types and properties, required
  properties (ZoneId on the instance group included);
- references: every Ref / Fn::GetAtt / ${...} in Fn::Sub / DependsOn / Condition target exists,
  and GetAtt attributes exist for the resource type; only known intrinsic functions;
- parameters: types, defaults inside their own constraints, NoEcho passwords without defaults,
  every parameter used and shown on the page, no NoEcho value in Outputs;
- security: the only ingress is TCP 443 and 80 from the PageAccessCidr parameter;
- secrets: every NoEcho parameter but the instance password is the value of an OOS secret
  parameter and is referenced nowhere else (never in RunCommand content or user data); the
  instance's RAM role may read exactly those secret parameters;
- the product table: parameter ranges and defaults (PARAMETER_TABLE), the gn6i/gn7i families,
  the password rule, the wiring RunCommand -> WaitConditionHandle -> WaitCondition, the endpoint
  output, and the stage-0 script's settings against what bootstrap.sh understands.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from . import (
    BOOTSTRAP,
    BOOTSTRAP_UNIT,
    COMPUTENEST_CONFIG,
    HTTPS_PORT,
    OPEN_PORTS,
    ROS_TEMPLATE,
    bootstrap_setting_keys,
)

SECTIONS = {
    "ROSTemplateFormatVersion",
    "Description",
    "Parameters",
    "Rules",
    "Conditions",
    "Mappings",
    "Resources",
    "Outputs",
    "Metadata",
    "Locals",
    "Workspace",
}
PSEUDO = {
    "ALIYUN::StackName",
    "ALIYUN::StackId",
    "ALIYUN::Region",
    "ALIYUN::AccountId",
    "ALIYUN::TenantId",
    "ALIYUN::NoValue",
    "ALIYUN::Index",
}
PARAM_TYPES = {"String", "Number", "CommaDelimitedList", "Json", "Boolean"}
PARAM_KEYS = {
    "Type",
    "Default",
    "AllowedValues",
    "AllowedPattern",
    "MinLength",
    "MaxLength",
    "MinValue",
    "MaxValue",
    "NoEcho",
    "Description",
    "ConstraintDescription",
    "Label",
    "AssociationProperty",
    "AssociationPropertyMetadata",
    "Confirm",
    "TextArea",
    "Placeholder",
    "Required",
}
FUNCTIONS = {
    "Fn::Sub",
    "Fn::GetAtt",
    "Fn::Select",
    "Fn::Join",
    "Fn::Base64Encode",
    "Fn::Base64Decode",
    "Fn::If",
    "Fn::Equals",
    "Fn::Not",
    "Fn::And",
    "Fn::Or",
    "Fn::FindInMap",
    "Fn::GetAZs",
    "Fn::Replace",
    "Fn::Split",
    "Fn::Str",
    "Fn::Indent",
    "Fn::MergeMapToList",
    "Fn::Length",
    "Fn::ListMerge",
    "Fn::Contains",
    "Fn::Index",
    "Fn::Jq",
    "Fn::GetJsonValue",
    "Fn::Min",
    "Fn::Max",
    "Fn::Add",
    "Fn::Calculate",
    "Fn::Avg",
    "Fn::SelectMapList",
    "Fn::Base64",
}


class Spec:
    def __init__(self, props: set[str], required: set[str], attrs: set[str]):
        self.props, self.required, self.attrs = props, required, attrs


# Property and attribute names from the ROS resource type reference (the subset of types used).
RESOURCE_SPECS = {
    "ALIYUN::ECS::VPC": Spec(
        {
            "CidrBlock",
            "VpcName",
            "Description",
            "EnableIpv6",
            "Ipv6CidrBlock",
            "Ipv6Isp",
            "ResourceGroupId",
            "Tags",
            "UserCidr",
            "DryRun",
        },
        set(),
        {"VpcId", "VRouterId", "RouteTableId", "VpcName", "CidrBlock", "Ipv6CidrBlock", "Arn", "ResourceGroupId"},
    ),
    "ALIYUN::ECS::VSwitch": Spec(
        {"VpcId", "ZoneId", "CidrBlock", "VSwitchName", "Description", "Ipv6CidrBlock", "Tags"},
        {"VpcId", "ZoneId", "CidrBlock"},
        {"VSwitchId", "CidrBlock", "ZoneId", "VpcId", "VSwitchName", "Ipv6CidrBlock", "Arn"},
    ),
    "ALIYUN::ECS::SecurityGroup": Spec(
        {
            "VpcId",
            "SecurityGroupName",
            "Description",
            "SecurityGroupIngress",
            "SecurityGroupEgress",
            "SecurityGroupType",
            "ResourceGroupId",
            "Tags",
        },
        set(),
        {"SecurityGroupId", "SecurityGroupName"},
    ),
    "ALIYUN::ECS::InstanceGroup": Spec(
        {
            "SecurityGroupId",
            "SecurityGroupIds",
            "ImageId",
            "InstanceType",
            "InstanceName",
            "Description",
            "HostName",
            "Password",
            "PasswordInherit",
            "IoOptimized",
            "ZoneId",
            "InternetChargeType",
            "InternetMaxBandwidthIn",
            "InternetMaxBandwidthOut",
            "VpcId",
            "VSwitchId",
            "MaxAmount",
            "MinAmount",
            "AllocatePublicIP",
            "AutoReleaseTime",
            "DiskMappings",
            "NetworkType",
            "PrivateIpAddress",
            "SystemDiskCategory",
            "SystemDiskDescription",
            "SystemDiskDiskName",
            "SystemDiskSize",
            "SystemDiskPerformanceLevel",
            "Tags",
            "UserData",
            "KeyPairName",
            "RamRoleName",
            "SpotPriceLimit",
            "SpotStrategy",
            "DeletionProtection",
            "InstanceChargeType",
            "Period",
            "PeriodUnit",
            "AutoRenew",
            "AutoRenewPeriod",
            "ResourceGroupId",
            "DeploymentSetId",
            "CreditSpecification",
            "HpcClusterId",
            "LaunchTemplateId",
            "LaunchTemplateName",
        },
        {"ImageId", "InstanceType", "MaxAmount", "ZoneId"},  # ZoneId: required by our rule, not by ROS
        {
            "InstanceIds",
            "PublicIps",
            "PrivateIps",
            "InnerIps",
            "HostNames",
            "ZoneIds",
            "OrderId",
            "RelatedOrderIds",
            "Ipv6AddressIds",
            "Ipv6Addresses",
        },
    ),
    "ALIYUN::ECS::RunCommand": Spec(
        {
            "CommandContent",
            "Type",
            "InstanceIds",
            "Name",
            "Description",
            "Timeout",
            "Sync",
            "Parameters",
            "EnableParameter",
            "WorkingDir",
            "Frequency",
            "KeepCommand",
            "ContentEncoding",
            "Username",
            "RepeatMode",
            "Tags",
            "ResourceGroupId",
            "Launcher",
            "ContainerId",
            "ContainerName",
            "WindowsPasswordName",
        },
        {"CommandContent", "Type", "InstanceIds"},
        {"CommandId", "InvokeId", "InvokeInstances", "InvokeResults"},
    ),
    "ALIYUN::OOS::SecretParameter": Spec(
        {"Name", "Value", "Description", "Constraints", "KeyId", "Tags", "ResourceGroupId"},
        {"Name", "Value"},
        {"Name", "Type", "Value"},
    ),
    "ALIYUN::RAM::Role": Spec(
        {
            "RoleName",
            "AssumeRolePolicyDocument",
            "Policies",
            "PolicyAttachments",
            "Description",
            "MaxSessionDuration",
            "DeletionForce",
            "IgnoreExisting",
        },
        {"RoleName", "AssumeRolePolicyDocument"},
        {"RoleName", "RoleId", "Arn"},
    ),
    "ALIYUN::ROS::WaitConditionHandle": Spec(
        {"Count", "Mode"}, set(), {"CurlCli", "WindowsCurlCli", "PowerShellCurlCli", "Headers", "URL"}
    ),
    "ALIYUN::ROS::WaitCondition": Spec(
        {"Handle", "Timeout", "Count"},
        {"Handle", "Timeout"},
        {"Data", "LastData", "ErrorData", "LastErrorData", "JoinedErrorData", "JoinedLastErrorData"},
    ),
}
RESOURCE_KEYS = {
    "Type",
    "Properties",
    "DependsOn",
    "Condition",
    "DeletionPolicy",
    "Metadata",
    "Count",
    "UpdatePolicy",
    "Description",
}

# The parameters the cloud page exposes, with the product's ranges (the deploy issue's table).
REQUIRED_PARAMETERS = [
    "ServiceInstanceName",
    "RegionId",
    "PayType",
    "PayPeriodUnit",
    "PayPeriod",
    "ZoneId",
    "VpcCidrBlock",
    "VSwitchCidrBlock",
    "EcsInstanceType",
    "SystemDiskSize",
    "InstancePassword",
    "Checkpoint",
    "PageAccessCidr",
    "PagePassword",
]
PARAMETER_TABLE = {
    "SystemDiskSize": {"Type": "Number", "MinValue": 60, "MaxValue": 500, "Default": 100},
    "PayType": {"Type": "String", "AllowedValues": ["PostPaid", "PrePaid"], "Default": "PostPaid"},
    "InstancePassword": {"Type": "String", "NoEcho": True, "MinLength": 8, "MaxLength": 30},
    "PagePassword": {"Type": "String", "NoEcho": True},
    "Checkpoint": {"Type": "String", "Default": "facebook/musicgen-small"},
    "EcsInstanceType": {"Type": "String"},
    "ZoneId": {"Type": "String", "AssociationProperty": "ALIYUN::ECS::Instance::ZoneId"},
}
INSTANCE_FAMILIES = {"ecs.gn6i", "ecs.gn7i"}
# The cloud's password rule: 8-30 characters, at least three of upper, lower, digit, special.
PASSWORDS_GOOD = ["Abcdefg1", "abcdef1!", "ABCDEF1!", "Abcdefg!", "Musicgen2026(x)", "Aa1" + "b" * 27]
PASSWORDS_BAD = ["abcdefgh", "abcdefg1", "ABCDEFG!", "12345678", "Ab1!", "Aa1" + "b" * 28, "Abc def1", "Abcdefg1\u00e9"]
INSTANCE_TYPES_GOOD = [
    "ecs.gn7i-c8g1.2xlarge",
    "ecs.gn7i-c16g1.4xlarge",
    "ecs.gn6i-c4g1.xlarge",
    "ecs.gn6i-c8g1.2xlarge",
]
INSTANCE_TYPES_BAD = ["ecs.g7.large", "ecs.gn7-c12g1.3xlarge", "ecs.gn6v-c8g1.2xlarge", "ecs.gn7i"]

SUB_VAR = re.compile(r"\$\{([^}]*)\}")


def load(path: Path = ROS_TEMPLATE) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


# --- generic walking ------------------------------------------------------------------------------


def _walk(node, path, visit):
    visit(node, path)
    if isinstance(node, dict):
        for k, v in node.items():
            _walk(v, f"{path}.{k}", visit)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, f"{path}[{i}]", visit)


def sub_parts(value) -> tuple[str, dict] | None:
    """(template string, local variable map) of an Fn::Sub value, or None if malformed."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], dict):
        return value[0], value[1]
    return None


def sub_variables(text: str) -> list[str]:
    return [v for v in SUB_VAR.findall(text) if not v.startswith("!")]


def _refs_in(node) -> set[str]:
    """Names referenced by Ref, GetAtt (the resource) and Fn::Sub anywhere inside node."""
    found: set[str] = set()

    def visit(n, _path):
        if not isinstance(n, dict):
            return
        if "Ref" in n and isinstance(n["Ref"], str):
            found.add(n["Ref"])
        if "Fn::GetAtt" in n and isinstance(n["Fn::GetAtt"], list) and n["Fn::GetAtt"]:
            found.add(str(n["Fn::GetAtt"][0]))
        if "Fn::Sub" in n:
            parts = sub_parts(n["Fn::Sub"])
            if parts:
                for var in sub_variables(parts[0]):
                    if var not in parts[1]:
                        found.add(var.split(".", 1)[0])

    _walk(node, "", visit)
    return found


# --- checks -----------------------------------------------------------------------------------------


def check_structure(doc: dict) -> list[str]:
    out = []
    if doc.get("ROSTemplateFormatVersion") != "2015-09-01":
        out.append("ROSTemplateFormatVersion must be '2015-09-01'")
    for key in doc:
        if key not in SECTIONS:
            out.append(f"unknown top-level section {key!r}")
    for name, res in (doc.get("Resources") or {}).items():
        if not isinstance(res, dict) or "Type" not in res:
            out.append(f"resource {name}: no Type")
            continue
        spec = RESOURCE_SPECS.get(res["Type"])
        if spec is None:
            out.append(f"resource {name}: type {res['Type']} is not one this checker knows (add its spec)")
            continue
        for key in res:
            if key not in RESOURCE_KEYS:
                out.append(f"resource {name}: unknown key {key!r}")
        props = res.get("Properties") or {}
        for p in props:
            if p not in spec.props:
                out.append(f"resource {name} ({res['Type']}): unknown property {p!r}")
        for p in sorted(spec.required - set(props)):
            out.append(f"resource {name} ({res['Type']}): required property {p} is missing")
    return out


def check_references(doc: dict) -> list[str]:
    out: list[str] = []
    params = set((doc.get("Parameters") or {}).keys())
    resources = doc.get("Resources") or {}
    conditions = set((doc.get("Conditions") or {}).keys())
    names = params | set(resources) | PSEUDO

    def getatt_ok(target: str, attr: str, where: str):
        res = resources.get(target)
        if res is None:
            out.append(f"{where}: Fn::GetAtt target {target!r} is not a resource")
            return
        spec = RESOURCE_SPECS.get(res.get("Type"))
        if spec and attr not in spec.attrs:
            out.append(f"{where}: {res['Type']} has no attribute {attr!r}")

    def visit(node, path):
        if not isinstance(node, dict):
            return
        for key in node:
            if key.startswith("Fn::") and key not in FUNCTIONS:
                out.append(f"{path}: unknown function {key}")
        if "Ref" in node:
            if not isinstance(node["Ref"], str) or node["Ref"] not in names:
                out.append(f"{path}: Ref {node['Ref']!r} is neither a parameter, a resource nor a pseudo parameter")
        if "Fn::GetAtt" in node:
            v = node["Fn::GetAtt"]
            if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)):
                out.append(f"{path}: Fn::GetAtt needs [resource, attribute]")
            else:
                getatt_ok(v[0], v[1], path)
        if "Fn::Sub" in node:
            parts = sub_parts(node["Fn::Sub"])
            if parts is None:
                out.append(f"{path}: Fn::Sub needs a string or [string, map]")
            else:
                text, local = parts
                for var in sub_variables(text):
                    if var in local:
                        continue
                    if "." in var:
                        getatt_ok(*var.split(".", 1), where=f"{path} ${{{var}}}")
                    elif var not in names:
                        out.append(f"{path}: Fn::Sub variable ${{{var}}} is not defined")
                for var in local:
                    if var not in sub_variables(text):
                        out.append(f"{path}: Fn::Sub variable {var} is defined but unused")
        if "Fn::If" in node:
            v = node["Fn::If"]
            if not (isinstance(v, list) and len(v) == 3 and v[0] in conditions):
                out.append(f"{path}: Fn::If condition {v[0] if isinstance(v, list) and v else v!r} is not defined")

    for section in ("Resources", "Outputs", "Conditions", "Rules"):
        _walk(doc.get(section) or {}, section, visit)

    for name, res in resources.items():
        deps = res.get("DependsOn", [])
        for dep in [deps] if isinstance(deps, str) else deps:
            if dep not in resources:
                out.append(f"resource {name}: DependsOn {dep!r} is not a resource")
        if "Condition" in res and res["Condition"] not in conditions:
            out.append(f"resource {name}: Condition {res['Condition']!r} is not defined")

    # ${Param} in the page's association metadata
    for pname, p in (doc.get("Parameters") or {}).items():
        meta = p.get("AssociationPropertyMetadata") if isinstance(p, dict) else None
        if meta:
            for var in sub_variables(yaml.safe_dump(meta)):
                if var not in params:
                    out.append(f"parameter {pname}: metadata refers to unknown parameter ${{{var}}}")
    return out


def _pattern_ok(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


def check_parameters(doc: dict) -> list[str]:
    out = []
    params = doc.get("Parameters") or {}
    used = _refs_in({k: doc.get(k) for k in ("Resources", "Outputs", "Rules", "Conditions")})
    for name, p in params.items():
        where = f"parameter {name}"
        if not isinstance(p, dict):
            out.append(f"{where}: not a mapping")
            continue
        for key in p:
            if key not in PARAM_KEYS:
                out.append(f"{where}: unknown key {key!r}")
        if p.get("Type") not in PARAM_TYPES:
            out.append(f"{where}: Type {p.get('Type')!r} is not one of {sorted(PARAM_TYPES)}")
        if "AllowedPattern" in p:
            try:
                re.compile(p["AllowedPattern"])
            except re.error as exc:
                out.append(f"{where}: AllowedPattern does not compile ({exc})")
                continue
        for lo, hi in (("MinLength", "MaxLength"), ("MinValue", "MaxValue")):
            if lo in p and hi in p and p[lo] > p[hi]:
                out.append(f"{where}: {lo} {p[lo]} > {hi} {p[hi]}")
        if "Default" in p:
            d = p["Default"]
            if "AllowedValues" in p and d not in p["AllowedValues"]:
                out.append(f"{where}: Default {d!r} is not in AllowedValues")
            if "AllowedPattern" in p and not _pattern_ok(p["AllowedPattern"], str(d)):
                out.append(f"{where}: Default {d!r} does not match AllowedPattern")
            if "MinLength" in p and len(str(d)) < p["MinLength"] or "MaxLength" in p and len(str(d)) > p["MaxLength"]:
                out.append(f"{where}: Default length outside [MinLength, MaxLength]")
            if p.get("Type") == "Number":
                if not isinstance(d, (int, float)):
                    out.append(f"{where}: Default {d!r} is not a number")
                elif "MinValue" in p and d < p["MinValue"] or "MaxValue" in p and d > p["MaxValue"]:
                    out.append(f"{where}: Default {d} outside [MinValue, MaxValue]")
        secret = "password" in name.lower() or "secret" in name.lower()
        if secret and p.get("NoEcho") is not True:
            out.append(f"{where}: a password must be NoEcho: true")
        if p.get("NoEcho") and "Default" in p:
            out.append(f"{where}: a NoEcho parameter must not have a Default")
        if name not in used:
            out.append(f"{where}: never used by a resource, output or rule")
    # NoEcho values must not surface in Outputs
    secrets = {n for n, p in params.items() if isinstance(p, dict) and p.get("NoEcho")}
    for leak in sorted(_refs_in(doc.get("Outputs") or {}) & secrets):
        out.append(f"Outputs expose the NoEcho parameter {leak}")
    # every parameter shown on the page, once
    groups = ((doc.get("Metadata") or {}).get("ALIYUN::ROS::Interface") or {}).get("ParameterGroups") or []
    shown = [n for g in groups for n in g.get("Parameters", [])]
    for n in sorted(set(params) - set(shown)):
        out.append(f"parameter {n} is in no Metadata ParameterGroup")
    for n in sorted(set(shown) - set(params)):
        out.append(f"ParameterGroups list unknown parameter {n}")
    for n in sorted({n for n in shown if shown.count(n) > 1}):
        out.append(f"parameter {n} is listed in more than one ParameterGroup")
    return out


def _ingress_rules(doc: dict) -> list[tuple[str, dict]]:
    rules = []
    for name, res in (doc.get("Resources") or {}).items():
        props = res.get("Properties") or {}
        if res.get("Type") == "ALIYUN::ECS::SecurityGroup":
            for i, rule in enumerate(props.get("SecurityGroupIngress") or []):
                rules.append((f"{name}.SecurityGroupIngress[{i}]", rule))
        elif res.get("Type") in ("ALIYUN::ECS::SecurityGroupIngress", "ALIYUN::ECS::SecurityGroupIngresses"):
            rules.append((name, props))
    return rules


def check_security(doc: dict) -> list[str]:
    out = []
    rules = _ingress_rules(doc)
    allowed = {f"{p}/{p}" for p in OPEN_PORTS}
    opened = [rule.get("PortRange") for _, rule in rules]
    for want in sorted(allowed - set(opened)):
        out.append(f"no ingress rule for {want}: HTTPS (443) and its redirect (80) must be reachable")
    for where, rule in rules:
        if str(rule.get("IpProtocol", "")).lower() != "tcp":
            out.append(f"{where}: protocol {rule.get('IpProtocol')!r}; only tcp to the page is allowed")
        if rule.get("PortRange") not in allowed:
            out.append(f"{where}: opens {rule.get('PortRange')!r}; only {' and '.join(sorted(allowed))} may be open")
        if rule.get("SourceCidrIp") != {"Ref": "PageAccessCidr"}:
            out.append(f"{where}: source must be the PageAccessCidr parameter, not {rule.get('SourceCidrIp')!r}")
        if str(rule.get("Policy", "accept")).lower() != "accept":
            out.append(f"{where}: unexpected policy {rule.get('Policy')!r}")
    for name, res in (doc.get("Resources") or {}).items():
        if res.get("Type") == "ALIYUN::ECS::InstanceGroup":
            props = res.get("Properties") or {}
            if props.get("Password") != {"Ref": "InstancePassword"}:
                out.append(f"{name}: Password must come from the NoEcho InstancePassword parameter")
            if "UserData" in props and "PagePassword" in _refs_in(props["UserData"]):
                out.append(f"{name}: the page password must not travel in UserData")
    return out


def _secret_refs(node) -> set[str]:
    """Parameters a node reads: Ref, Fn::Sub ${Param} (its own text and variables)."""
    found = set(_refs_in(node))

    def visit(n, _path):
        if isinstance(n, dict) and "Fn::Sub" in n:
            parts = sub_parts(n["Fn::Sub"])
            if parts:
                found.update(v for v in sub_variables(parts[0]) if v not in parts[1])

    _walk(node, "", visit)
    return found


def check_secrets(doc: dict) -> list[str]:
    """Secrets only through OOS secret parameters; never in command content or user data."""
    out: list[str] = []
    params = doc.get("Parameters") or {}
    resources = doc.get("Resources") or {}
    secrets = {n for n, p in params.items() if isinstance(p, dict) and p.get("NoEcho") and n != "InstancePassword"}
    holders = {n: r for n, r in resources.items() if r.get("Type") == "ALIYUN::OOS::SecretParameter"}
    held = {
        (r.get("Properties") or {}).get("Value", {}).get("Ref")
        if isinstance((r.get("Properties") or {}).get("Value"), dict)
        else None: n
        for n, r in holders.items()
    }
    for name in sorted(secrets):
        if name not in held:
            out.append(f"secret parameter {name} must be the Value of an ALIYUN::OOS::SecretParameter")
    for rname, res in resources.items():
        props = res.get("Properties") or {}
        if res.get("Type") == "ALIYUN::ECS::RunCommand":
            leaked = _secret_refs(props.get("CommandContent")) & (secrets | {"InstancePassword"})
            for n in sorted(leaked):
                out.append(
                    f"{rname}: secret {n} is substituted into CommandContent (Cloud Assistant keeps it); "
                    "pass it as an OOS secret parameter"
                )
            for m in re.finditer(
                r"\[(\w+), (\w+)\]", yaml.safe_dump(props.get("CommandContent"), default_flow_style=True)
            ):
                if m.group(1) in holders and m.group(2) != "Name":
                    out.append(
                        f"{rname}: CommandContent reads {m.group(1)}.{m.group(2)}; only the secret's Name may travel"
                    )
        if res.get("Type") in ("ALIYUN::ECS::InstanceGroup", "ALIYUN::ECS::Instance") and "UserData" in props:
            for n in sorted(_secret_refs(props["UserData"]) & (secrets | {"InstancePassword"})):
                out.append(f"{rname}: secret {n} is in UserData (readable from the metadata service)")
        if res.get("Type") == "ALIYUN::OOS::SecretParameter":
            continue
        for n in sorted(_secret_refs(props) & secrets):
            out.append(f"{rname}: reads secret {n}; only its OOS secret parameter may")
    for n in sorted(_secret_refs(doc.get("Outputs") or {}) & (secrets | {"InstancePassword"})):
        out.append(f"Outputs expose secret {n}")
    # the instance's role reads exactly the template's secret parameters
    ig = [r.get("Properties") or {} for r in resources.values() if r.get("Type") == "ALIYUN::ECS::InstanceGroup"]
    role_ref = (
        (ig[0].get("RamRoleName") or {}).get("Fn::GetAtt", [None])[0]
        if ig and isinstance(ig[0].get("RamRoleName"), dict)
        else None
    )
    role = resources.get(role_ref) if role_ref else None
    if holders and (not role or role.get("Type") != "ALIYUN::RAM::Role"):
        out.append(
            "InstanceGroup RamRoleName must be the RoleName of the template's ALIYUN::RAM::Role "
            "(the instance reads its secrets through it)"
        )
    elif role:
        rp = role.get("Properties") or {}
        principal = yaml.safe_dump(rp.get("AssumeRolePolicyDocument"))
        if "ecs.aliyuncs.com" not in principal:
            out.append(f"{role_ref}: only ECS (ecs.aliyuncs.com) may assume the instance role")
        statements = [
            st for pol in rp.get("Policies") or [] for st in (pol.get("PolicyDocument") or {}).get("Statement", [])
        ]
        names = {str(((holders[h].get("Properties") or {}).get("Name") or {}).get("Fn::Sub", "")) for h in holders}
        granted = set()
        for st in statements:
            actions = st.get("Action") if isinstance(st.get("Action"), list) else [st.get("Action")]
            for a in actions:
                if str(a).startswith("oos:"):
                    if a != "oos:GetSecretParameter":
                        out.append(f"{role_ref}: action {a} is more than reading a secret parameter")
                    for r in st.get("Resource") or []:
                        arn = r.get("Fn::Sub", "") if isinstance(r, dict) else str(r)
                        suffix = arn.rsplit("secretparameter/", 1)[-1] if "secretparameter/" in arn else None
                        if suffix is None or suffix not in names:
                            out.append(
                                f"{role_ref}: grants {a} on {arn!r}, not one of the template's secret parameters"
                            )
                        else:
                            granted.add(suffix)
                elif not str(a).startswith("kms:"):
                    out.append(f"{role_ref}: action {a} is not needed to read the secrets")
        for n in sorted(names - granted):
            out.append(f"{role_ref}: cannot read the secret parameter {n}")
    return out


def _one(doc: dict, rtype: str, out: list[str]) -> tuple[str | None, dict]:
    found = [(n, r) for n, r in (doc.get("Resources") or {}).items() if r.get("Type") == rtype]
    if len(found) != 1:
        out.append(f"expected exactly one {rtype}, found {len(found)}")
        return None, {}
    return found[0][0], found[0][1].get("Properties") or {}


def stage0_script(doc: dict, values: dict | None = None) -> str:
    """The RunCommand's shell script with Fn::Sub variables replaced by sample values."""
    run = [r for r in (doc.get("Resources") or {}).values() if r.get("Type") == "ALIYUN::ECS::RunCommand"][0]
    parts = sub_parts(run["Properties"]["CommandContent"]["Fn::Sub"])
    text = parts[0]
    sample = {
        "NotifyB64": "Y3VybCAtaSAtWCBQT1NUIGh0dHBzOi8vZXhhbXBsZS5pbnZhbGlk",
        "SiteHost": "198.51.100.10",
        "TlsMode": "internal",
        "ALIYUN::Region": "cn-hangzhou",
        "PagePasswordSecretName": "musicgen-0f1e2d3c-page-password",
        "ApiTokenSecretName": "musicgen-0f1e2d3c-api-token",
        "Checkpoint": "facebook/musicgen-small",
        "SourceRepositoryUrl": "https://example.invalid/musicgen.git",
        "SourceRef": "main",
    }
    sample.update(values or {})
    return SUB_VAR.sub(lambda m: m.group(0) if m.group(1).startswith("!") else str(sample.get(m.group(1), "x")), text)


def check_product(doc: dict, bootstrap_text: str | None = None) -> list[str]:
    out: list[str] = []
    params = doc.get("Parameters") or {}
    for name in REQUIRED_PARAMETERS:
        if name not in params:
            out.append(f"the page must expose parameter {name}")
    for name, want in PARAMETER_TABLE.items():
        p = params.get(name) or {}
        for key, value in want.items():
            if p.get(key) != value:
                out.append(f"parameter {name}: {key} is {p.get(key)!r}, the product table says {value!r}")
    # instance type: gn6i / gn7i families, sensible default, pattern admits exactly those
    it = params.get("EcsInstanceType") or {}
    fams = set(
        (((it.get("AssociationPropertyMetadata") or {}).get("Constraints") or {}).get("InstanceTypeFamily")) or []
    )
    if fams != INSTANCE_FAMILIES:
        out.append(f"EcsInstanceType families are {sorted(fams)}, expected {sorted(INSTANCE_FAMILIES)}")
    pat = it.get("AllowedPattern", "")
    if not pat:
        out.append("EcsInstanceType needs an AllowedPattern restricting it to gn6i/gn7i")
    else:
        out += [f"EcsInstanceType pattern rejects {t}" for t in INSTANCE_TYPES_GOOD if not _pattern_ok(pat, t)]
        out += [f"EcsInstanceType pattern admits {t}" for t in INSTANCE_TYPES_BAD if _pattern_ok(pat, t)]
    if not str(it.get("Default", "")).startswith(("ecs.gn7i-", "ecs.gn6i-")):
        out.append(f"EcsInstanceType default {it.get('Default')!r} is not a gn6i/gn7i type")
    # passwords
    pw = params.get("InstancePassword") or {}
    pat = pw.get("AllowedPattern")
    if not pat:
        out.append("InstancePassword needs the cloud's complexity rule as AllowedPattern")
    else:

        def ok(v):
            return _pattern_ok(pat, v) and pw.get("MinLength", 0) <= len(v) <= pw.get("MaxLength", 10**6)

        out += [f"InstancePassword rule rejects a valid password {v!r}" for v in PASSWORDS_GOOD if not ok(v)]
        out += [f"InstancePassword rule admits a weak password {v!r}" for v in PASSWORDS_BAD if ok(v)]
    for name in ("InstancePassword", "PagePassword"):
        if "Default" in (params.get(name) or {}):
            out.append(f"{name} must have no Default")
    # network and instance wiring
    vpc, _ = _one(doc, "ALIYUN::ECS::VPC", out)
    vsw_name, vsw = _one(doc, "ALIYUN::ECS::VSwitch", out)
    sg_name, sg = _one(doc, "ALIYUN::ECS::SecurityGroup", out)
    ig_name, ig = _one(doc, "ALIYUN::ECS::InstanceGroup", out)
    h_name, _ = _one(doc, "ALIYUN::ROS::WaitConditionHandle", out)
    wc_name, wc = _one(doc, "ALIYUN::ROS::WaitCondition", out)
    rc_name, rc = _one(doc, "ALIYUN::ECS::RunCommand", out)
    if vsw_name and vsw.get("ZoneId") != {"Ref": "ZoneId"}:
        out.append("VSwitch ZoneId must be the ZoneId parameter")
    if ig_name:
        if ig.get("ZoneId") != {"Ref": "ZoneId"}:
            out.append("InstanceGroup ZoneId must be the ZoneId parameter")
        if ig.get("InstanceType") != {"Ref": "EcsInstanceType"}:
            out.append("InstanceGroup InstanceType must be the EcsInstanceType parameter")
        if ig.get("SystemDiskSize") != {"Ref": "SystemDiskSize"}:
            out.append("InstanceGroup SystemDiskSize must be the SystemDiskSize parameter")
        if ig.get("SystemDiskCategory") != "cloud_essd":
            out.append("InstanceGroup SystemDiskCategory must be cloud_essd")
        if ig.get("InstanceChargeType") != {"Ref": "PayType"}:
            out.append("InstanceGroup InstanceChargeType must be the PayType parameter")
        if ig.get("MaxAmount") != 1:
            out.append("InstanceGroup MaxAmount must be 1 (one GPU host)")
        if vsw_name and ig.get("VSwitchId") != {"Ref": vsw_name}:
            out.append("InstanceGroup must be in the template's VSwitch")
        if sg_name and ig.get("SecurityGroupId") != {"Ref": sg_name}:
            out.append("InstanceGroup must use the template's security group")
        if not ig.get("InternetMaxBandwidthOut"):
            out.append("InstanceGroup needs InternetMaxBandwidthOut > 0 (public IP for the page and downloads)")
    if vpc and vsw_name and vsw.get("VpcId") != {"Ref": vpc}:
        out.append("VSwitch must be in the template's VPC")
    if vpc and sg_name and sg.get("VpcId") != {"Ref": vpc}:
        out.append("SecurityGroup must be in the template's VPC")
    if wc_name:
        if h_name and wc.get("Handle") != {"Ref": h_name}:
            out.append("WaitCondition Handle must be the WaitConditionHandle")
        if not isinstance(wc.get("Timeout"), int) or not 1800 <= wc["Timeout"] <= 43200:
            out.append("WaitCondition Timeout must leave time for driver, images and export (1800-43200 s)")
        deps = doc["Resources"][wc_name].get("DependsOn") or []
        if rc_name and rc_name not in ([deps] if isinstance(deps, str) else deps):
            out.append("WaitCondition must DependsOn the RunCommand (its timer starts after the bootstrap starts)")
    if rc_name:
        if rc.get("InstanceIds") != {"Fn::GetAtt": [ig_name, "InstanceIds"]}:
            out.append("RunCommand must target the InstanceGroup's InstanceIds")
        if rc.get("Type") != "RunShellScript":
            out.append("RunCommand Type must be RunShellScript")
        content = rc.get("CommandContent") or {}
        parts = sub_parts(content.get("Fn::Sub")) if isinstance(content, dict) else None
        if not parts:
            out.append("RunCommand CommandContent must be an Fn::Sub [script, variables]")
        else:
            text, local = parts
            if h_name and f"[{h_name}, CurlCli]" not in yaml.safe_dump(local, default_flow_style=True):
                out.append("RunCommand must hand the WaitConditionHandle's CurlCli to the host")
            for need in (
                "deploy/host/bootstrap.sh",
                "deploy/host/systemd/musicgen-bootstrap.service",
                "musicgen-bootstrap.service",
            ):
                if need not in text:
                    out.append(f"RunCommand script does not install/start {need}")
            if re.search(r"^\s*set -[a-z]*x", text, re.M) or "bash -x" in text:
                out.append("RunCommand script must not trace (set -x): it handles secrets")
            secret_vars = {v for v, val in local.items() if "Base64Encode" in yaml.safe_dump(val)}
            for line in text.splitlines():
                for v in secret_vars:
                    if f"${{{v}}}" in line and not re.fullmatch(rf"\s*echo '\$\{{{v}\}}' \| base64 -d >\S+", line):
                        out.append(f"RunCommand line {line.strip()!r}: a secret may only be decoded into a file")
            env = re.search(r"deploy\.env\" <<'EOF'\n(.*?)\nEOF", text, re.S)
            if not env:
                out.append("RunCommand script must write /etc/musicgen/deploy.env from a quoted heredoc")
            else:
                keys = {line.split("=", 1)[0] for line in env.group(1).splitlines() if "=" in line}
                known = bootstrap_setting_keys(bootstrap_text)
                for k in sorted(keys - known):
                    out.append(f"deploy.env key {k} is unknown to bootstrap.sh")
                for k in (
                    "MUSICGEN_CHECKPOINT",
                    "MUSICGEN_SOURCE_REPO",
                    "MUSICGEN_PUBLIC_URL",
                    "MUSICGEN_SITE_HOST",
                    "MUSICGEN_OOS_REGION",
                    "MUSICGEN_SECRET_PAGE_PASSWORD",
                    "MUSICGEN_SECRET_API_TOKEN",
                ):
                    if k not in keys:
                        out.append(f"deploy.env must set {k}")
    # the endpoint output
    outputs = doc.get("Outputs") or {}
    endpoint = outputs.get("Endpoint", {}).get("Value")
    parts = sub_parts(endpoint.get("Fn::Sub")) if isinstance(endpoint, dict) and "Fn::Sub" in endpoint else None
    if not parts:
        out.append("Outputs.Endpoint must be an Fn::Sub URL")
    else:
        text, local = parts
        if not text.startswith("https://") or re.search(rf":(?!{HTTPS_PORT}/)\d+", text.split("://", 1)[1]):
            out.append(f"Outputs.Endpoint {text!r} must be https:// on port {HTTPS_PORT}")
        if ig_name and "PublicIps" not in yaml.safe_dump(local):
            out.append("Outputs.Endpoint must use the instance's public IP")
    # the RegionId rule
    rules = doc.get("Rules") or {}
    if not any("ALIYUN::Region" in yaml.safe_dump(r) and "RegionId" in yaml.safe_dump(r) for r in rules.values()):
        out.append("a Rule must assert that RegionId is the stack's region")
    return out


def check_files() -> list[str]:
    out = []
    for p in (BOOTSTRAP, BOOTSTRAP_UNIT):
        if not p.exists():
            out.append(f"{p} is missing (the template's RunCommand installs it)")
    cfg = yaml.safe_load(COMPUTENEST_CONFIG.read_text())
    tmpl = ((cfg.get("Service") or {}).get("DeployMetadata") or {}).get("TemplateConfigs") or []
    if not tmpl:
        out.append("config.yaml has no Service.DeployMetadata.TemplateConfigs")
    for t in tmpl:
        if not (COMPUTENEST_CONFIG.parent / t.get("Url", "")).exists():
            out.append(f"config.yaml template Url {t.get('Url')!r} does not exist")
        if not t.get("AllowedRegions"):
            out.append(f"config.yaml template {t.get('Name')!r} lists no AllowedRegions")
    if (cfg.get("Service") or {}).get("DeployType") != "ros":
        out.append("config.yaml Service.DeployType must be ros")
    return out


def check_template(doc: dict, bootstrap_text: str | None = None) -> list[str]:
    doc = copy.deepcopy(doc)
    return (
        check_structure(doc)
        + check_references(doc)
        + check_parameters(doc)
        + check_security(doc)
        + check_secrets(doc)
        + check_product(doc, bootstrap_text)
    )


def check_all() -> list[str]:
    return check_template(load()) + check_files()
