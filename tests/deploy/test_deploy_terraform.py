"""deploy/terraform parses and passes the static checker; broken copies are caught; the
cloud-init user data it renders validates against cloud-init's schema."""

from __future__ import annotations

import copy
import shutil

import pytest
import yaml

from deploy.checks import TERRAFORM_DIR, cloudinit, terraform, tools


def test_terraform_parses_and_passes():
    model = terraform.parse_dir()
    assert {
        "alicloud_vpc.main",
        "alicloud_vswitch.main",
        "alicloud_security_group.main",
        "alicloud_security_group_rule.https",
        "alicloud_security_group_rule.http_redirect",
        "alicloud_oos_secret_parameter.page_password",
        "alicloud_oos_secret_parameter.api_token",
        "alicloud_ram_role.instance",
        "alicloud_instance.gpu",
        "alicloud_ecs_command.wait_ready",
        "alicloud_ecs_invocation.wait_ready",
    } <= set(model["resource"])
    assert terraform.check_config(model) == []


@pytest.fixture
def tf_copy(tmp_path):
    """A copy of deploy/terraform next to a copy of deploy/host (the module reads ../host/*)."""
    dst = tmp_path / "deploy"
    shutil.copytree(TERRAFORM_DIR, dst / "terraform")
    shutil.copytree(TERRAFORM_DIR.parent / "host", dst / "host")
    return dst / "terraform"


TEXT_MUTATIONS = [
    ("main.tf", 'port_range        = "80/80"', 'port_range        = "22/22"', "opens '22/22'"),
    ("main.tf", 'port_range        = "443/443"', 'port_range        = "8000/8002"', "opens '8000/8002'"),
    (
        "main.tf",
        'port_range        = "443/443"',
        'port_range        = "80/80"',
        "no alicloud_security_group_rule opens 443/443",
    ),
    # secrets back in the user data / command content, as before OOS
    (
        "main.tf",
        "    deploy_env_b64 = base64encode(local.deploy_env)\n",
        "    deploy_env_b64 = base64encode(local.deploy_env)\n    page_password_b64 = base64encode(var.page_password)\n",
        "local.user_data reads secret var.page_password",
    ),
    (
        "main.tf",
        '    "MUSICGEN_PRECISION=fp16",',
        '    "MUSICGEN_PRECISION=fp16",\n    "MUSICGEN_TOKEN=${var.api_token}",',
        "local.deploy_env reads secret var.api_token",
    ),
    (
        "main.tf",
        '    "export MUSICGEN_WAIT_TIMEOUT=${var.ready_timeout}",',
        '    "export MUSICGEN_WAIT_TIMEOUT=${var.ready_timeout}",\n    "echo ${var.page_password} >/dev/null",',
        "alicloud_ecs_command.wait_ready reads secret var.page_password",
    ),
    (
        "main.tf",
        "  value                 = var.api_token\n",
        '  value                 = "x"\n',
        "var.api_token must be the value of an alicloud_oos_secret_parameter",
    ),
    (
        "main.tf",
        '  type                  = "Secret"\n  description           = "MusicGen page',
        '  type                  = "String"\n  description           = "MusicGen page',
        "type must be Secret",
    ),
    (
        "main.tf",
        "  role_name                  = alicloud_ram_role.instance.name\n",
        "",
        "role_name must be the name of the configuration's alicloud_ram_role",
    ),
    (
        "main.tf",
        '        Action = ["oos:GetSecretParameter"]',
        '        Action = ["oos:GetSecretParameter", "oos:GetSecretParameters", "ecs:*"]',
        "oos:GetSecretParameters is more than reading",
    ),
    (
        "main.tf",
        "secretparameter/${alicloud_oos_secret_parameter.api_token.secret_parameter_name}",
        "secretparameter/*",
        "grants secretparameter/*",
    ),
    (
        "main.tf",
        "secretparameter/${alicloud_oos_secret_parameter.api_token.secret_parameter_name}",
        "secretparameter/${alicloud_oos_secret_parameter.page_password.secret_parameter_name}",
        "cannot read alicloud_oos_secret_parameter.api_token",
    ),
    ("main.tf", "cidr_ip           = var.page_access_cidr", 'cidr_ip           = "0.0.0.0/0"', "0.0.0.0/0"),
    ("main.tf", "unit_b64       = filebase64", "unit_bytes     = filebase64", "uses ${unit_b64}"),
    (
        "main.tf",
        "../host/wait-ready.sh",
        "../host/wait-until-ready.sh",
        "wait-until-ready.sh (relative to the module) does not exist",
    ),
    (
        "main.tf",
        "vpc_id       = alicloud_vpc.main.id",
        "vpc_id       = alicloud_vpc.other.id",
        "alicloud_vpc.other is referenced",
    ),
    ("main.tf", "cidr_block = var.vpc_cidr", "cidr_block = var.vpc_cidr_block", "var.vpc_cidr_block is referenced"),
    (
        "main.tf",
        "password                   = var.instance_password",
        'password                   = "Passw0rd!"',
        "alicloud_instance.password",
    ),
    (
        "variables.tf",
        '  sensitive   = true\n\n  validation {\n    condition     = can(regex("^[!-~]',
        '\n  validation {\n    condition     = can(regex("^[!-~]',
        "page_password must be sensitive",
    ),
    (
        "variables.tf",
        "var.system_disk_size <= 500",
        "var.system_disk_size <= 2000",
        "system_disk_size must be validated to 60-500",
    ),
    (
        "variables.tf",
        'default     = "ecs.gn7i-c8g1.2xlarge"',
        'default     = "ecs.g7.2xlarge"',
        "instance_type default",
    ),
    ("variables.tf", "^ecs\\\\.gn(6i|7i)-", "^ecs\\\\.", "instance_type validation admits ecs.g7.large"),
    ("variables.tf", '"[A-Z]", "[0-9]", ', "", "instance_password needs the cloud's complexity rule"),
    ("versions.tf", 'version = ">= 1.240.0, < 2.0.0"', 'version = ">= 1.240.0"', "needs an upper bound"),
    (
        "outputs.tf",
        'value       = "musicgen"',
        "value       = var.page_password",
        "output page_user exposes ['page_password']",
    ),
    ("main.tf", 'resource "alicloud_vpc" "main" {', 'resource "alicloud_vpc" "main" {{', "does not parse"),
]


@pytest.mark.parametrize("fname, old, new, expected", TEXT_MUTATIONS, ids=[m[3][:40] for m in TEXT_MUTATIONS])
def test_checker_catches(tf_copy, fname, old, new, expected):
    path = tf_copy / fname
    text = path.read_text()
    assert old in text, f"mutation anchor {old!r} not in {fname}"
    path.write_text(text.replace(old, new, 1))
    findings = terraform.check_all(tf_copy)
    assert any(expected in f for f in findings), f"{expected!r} not in {findings}"


def test_extra_ingress_rule_is_caught():
    model = copy.deepcopy(terraform.parse_dir())
    model["resource"]["alicloud_security_group_rule.triton"] = {
        "type": "ingress",
        "ip_protocol": "tcp",
        "port_range": "8000/8002",
        "cidr_ip": "${var.page_access_cidr}",
        "security_group_id": "${alicloud_security_group.main.id}",
    }
    assert any("opens '8000/8002'" in f for f in terraform.check_config(model))


def test_terraform_fmt():
    result = tools.terraform_fmt(TERRAFORM_DIR)
    if result is None:
        pytest.skip("no terraform binary on PATH (python-hcl2 parsing above still ran)")
    ok, out = result
    assert ok, out


def test_terraform_fmt_sees_bad_formatting(tf_copy):
    if tools.terraform_fmt(tf_copy) is None:
        pytest.skip("no terraform binary on PATH")
    (tf_copy / "outputs.tf").write_text((tf_copy / "outputs.tf").read_text().replace("  value       =", "value="))
    ok, _ = tools.terraform_fmt(tf_copy)
    assert not ok


def test_cloud_init_user_data_is_valid():
    text = terraform.render_cloud_init()
    assert cloudinit.check_cloud_config(text) == []


def _mutate_cloud_config(fn):
    doc = yaml.safe_load(terraform.render_cloud_init())
    fn(doc)
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)


def _files(doc):
    return {f["path"]: f for f in doc["write_files"]}


CLOUD_INIT_MUTATIONS = [
    (lambda d: _files(d)["/etc/musicgen/deploy.env"].update(permissions="0644"), "must be root:root 0600"),
    (
        lambda d: d["write_files"].append(
            {"path": "/etc/musicgen/page-password", "content": "x", "permissions": "0600"}
        ),
        "the user data must carry no secret",
    ),
    (lambda d: _files(d)["/opt/musicgen/bin/bootstrap.sh"].update(content="IyEvYmluL3NoCg=="), "byte for byte"),
    (lambda d: d["write_files"].append({"content": "x"}), "'path' is a required property"),
    (lambda d: d["write_files"][0].update(encoding="rot13"), "is not one of"),
    (lambda d: d.update(runcmd="systemctl start musicgen-bootstrap.service"), "is not of type 'array'"),
    (lambda d: d.update(runcmd=[["systemctl", "start", "musicgen-bootstrap.service"]]), "--no-block"),
    (lambda d: d.update(runcmd=[["true"]]), "must start musicgen-bootstrap.service"),
    (lambda d: d.update(write_file=[]), "unknown cloud-config key 'write_file'"),
]


@pytest.mark.parametrize("mutate, expected", CLOUD_INIT_MUTATIONS, ids=[m[1][:30] for m in CLOUD_INIT_MUTATIONS])
def test_cloud_init_checker_catches(mutate, expected):
    findings = cloudinit.check_cloud_config(_mutate_cloud_config(mutate))
    assert any(expected in f for f in findings), f"{expected!r} not in {findings}"


def test_cloud_init_header_is_required():
    assert any("#cloud-config" in f for f in cloudinit.check_cloud_config(terraform.render_cloud_init()[1:]))


def test_cloud_init_env_keys_are_the_bootstraps():
    import base64

    env = "MUSICGEN_CHECKPOINT=x\nMUSICGEN_TYPO=1\n"
    text = terraform.render_cloud_init({"deploy_env_b64": base64.b64encode(env.encode()).decode()})
    assert any("MUSICGEN_TYPO is unknown to bootstrap.sh" in f for f in cloudinit.check_cloud_config(text))
