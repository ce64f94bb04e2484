"""The Compute Nest ROS template's internal consistency, and that the checker catches real
mistakes: each mutation below breaks a copy of the template and must produce a finding."""

from __future__ import annotations

import copy

import pytest

from deploy.checks import ros, tools


@pytest.fixture(scope="module")
def template():
    return ros.load()


def test_template_is_consistent(template):
    assert ros.check_template(template) == []


def test_compute_nest_config_points_at_the_template():
    assert ros.check_files() == []


def test_parameter_table(template):
    p = template["Parameters"]
    assert (p["SystemDiskSize"]["MinValue"], p["SystemDiskSize"]["MaxValue"], p["SystemDiskSize"]["Default"]) == (
        60,
        500,
        100,
    )
    assert p["InstancePassword"]["NoEcho"] is True and "Default" not in p["InstancePassword"]
    assert p["PagePassword"]["NoEcho"] is True and "Default" not in p["PagePassword"]
    assert p["EcsInstanceType"]["Default"] == "ecs.gn7i-c8g1.2xlarge"
    assert p["Checkpoint"]["Default"] == "facebook/musicgen-small"
    assert "Default" not in p["PageAccessCidr"]


def _res(doc, rtype):
    return next(r for r in doc["Resources"].values() if r["Type"] == rtype)


def _drop_vswitch(d):
    del d["Resources"]["VSwitch"]


def _drop_handle(d):
    del d["Resources"]["WaitConditionHandle"]


def _open_ssh(d):
    d["Resources"]["SecurityGroup"]["Properties"]["SecurityGroupIngress"].append(
        {"IpProtocol": "tcp", "PortRange": "22/22", "SourceCidrIp": {"Ref": "PageAccessCidr"}}
    )


def _open_triton(d):
    d["Resources"]["TritonIngress"] = {
        "Type": "ALIYUN::ECS::SecurityGroupIngress",
        "Properties": {
            "SecurityGroupId": {"Ref": "SecurityGroup"},
            "IpProtocol": "tcp",
            "PortRange": "8000/8002",
            "SourceCidrIp": "0.0.0.0/0",
        },
    }


def _world_open_page(d):
    d["Resources"]["SecurityGroup"]["Properties"]["SecurityGroupIngress"][0]["SourceCidrIp"] = "0.0.0.0/0"


def _password_default(d):
    d["Parameters"]["InstancePassword"]["Default"] = "Passw0rd!"


def _page_password_echo(d):
    del d["Parameters"]["PagePassword"]["NoEcho"]


def _disk_range(d):
    d["Parameters"]["SystemDiskSize"]["MaxValue"] = 2000


def _disk_default_outside(d):
    d["Parameters"]["SystemDiskSize"]["Default"] = 40


def _no_zone(d):
    del d["Resources"]["InstanceGroup"]["Properties"]["ZoneId"]


def _typo(d):
    props = d["Resources"]["InstanceGroup"]["Properties"]
    props["InstanceTyp"] = props.pop("InstanceType")


def _bad_attribute(d):
    d["Outputs"]["InstanceId"]["Value"]["Fn::Select"][1]["Fn::GetAtt"][1] = "InstanceId"


def _sub_undefined(d):
    d["Resources"]["RunBootstrap"]["Properties"]["Name"]["Fn::Sub"] = "${ServiceName}-bootstrap"


def _unused_parameter(d):
    d["Parameters"]["Unused"] = {"Type": "String", "Default": "x"}
    d["Metadata"]["ALIYUN::ROS::Interface"]["ParameterGroups"][0]["Parameters"].append("Unused")


def _not_on_page(d):
    d["Metadata"]["ALIYUN::ROS::Interface"]["ParameterGroups"][-1]["Parameters"].remove("PageAccessCidr")


def _other_family(d):
    d["Parameters"]["EcsInstanceType"]["AssociationPropertyMetadata"]["Constraints"]["InstanceTypeFamily"].append(
        "ecs.g7"
    )


def _loose_type_pattern(d):
    d["Parameters"]["EcsInstanceType"]["AllowedPattern"] = "^ecs\\..*$"


def _weak_password_rule(d):
    d["Parameters"]["InstancePassword"]["AllowedPattern"] = "^[A-Za-z0-9]{8,30}$"


def _unknown_setting(d):
    cc = d["Resources"]["RunBootstrap"]["Properties"]["CommandContent"]["Fn::Sub"]
    cc[0] = cc[0].replace("MUSICGEN_PAGE_PORT=80\n", "MUSICGEN_PAGE_PORT=80\nMUSICGEN_TYPO=1\n")


def _raw_password_in_script(d):
    cc = d["Resources"]["RunBootstrap"]["Properties"]["CommandContent"]["Fn::Sub"]
    cc[0] = cc[0].replace("cat >", "echo '${PagePassword}' >/etc/musicgen/page-password\ncat >", 1)


def _base64_password_in_script(d):  # what the template did before the secrets moved to OOS
    cc = d["Resources"]["RunBootstrap"]["Properties"]["CommandContent"]["Fn::Sub"]
    cc[0] = cc[0].replace("cat >", "echo '${PagePasswordB64}' | base64 -d >/etc/musicgen/page-password\ncat >", 1)
    cc[1]["PagePasswordB64"] = {"Fn::Base64Encode": {"Ref": "PagePassword"}}


def _token_value_in_script(d):
    cc = d["Resources"]["RunBootstrap"]["Properties"]["CommandContent"]["Fn::Sub"]
    cc[1]["ApiTokenSecretName"] = {"Fn::GetAtt": ["ApiTokenSecret", "Value"]}


def _token_in_user_data(d):
    d["Resources"]["InstanceGroup"]["Properties"]["UserData"] = {"Fn::Sub": "#!/bin/sh\necho ${ApiToken} >/t"}


def _token_not_a_secret_parameter(d):
    del d["Resources"]["ApiTokenSecret"]
    cc = d["Resources"]["RunBootstrap"]["Properties"]["CommandContent"]["Fn::Sub"]
    cc[1]["ApiTokenSecretName"] = "x"


def _role_reads_everything(d):
    st = d["Resources"]["InstanceRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]
    st["Resource"] = ["acs:oos:*:*:secretparameter/*"]


def _role_may_write(d):
    st = d["Resources"]["InstanceRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]
    st["Action"].append("oos:UpdateSecretParameter")


def _no_role(d):
    del d["Resources"]["InstanceGroup"]["Properties"]["RamRoleName"]


def _no_https(d):
    d["Resources"]["SecurityGroup"]["Properties"]["SecurityGroupIngress"].pop(0)


def _printed_secret(d):
    cc = d["Resources"]["RunBootstrap"]["Properties"]["CommandContent"]["Fn::Sub"]
    cc[0] = cc[0].replace('echo "musicgen: bootstrap started', 'echo "${NotifyB64}"\necho "musicgen: bootstrap started')


def _traced(d):
    cc = d["Resources"]["RunBootstrap"]["Properties"]["CommandContent"]["Fn::Sub"]
    cc[0] = cc[0].replace("set -euo pipefail", "set -euxo pipefail")


def _endpoint_port(d):
    d["Outputs"]["Endpoint"]["Value"]["Fn::Sub"][0] = "https://${SiteHost}:8000/"


def _endpoint_plain_http(d):
    d["Outputs"]["Endpoint"]["Value"]["Fn::Sub"][0] = "http://${SiteHost}/"


def _output_secret(d):
    d["Outputs"]["Leak"] = {"Value": {"Ref": "PagePassword"}}


def _no_region_rule(d):
    del d["Rules"]


def _bad_depends(d):
    d["Resources"]["WaitCondition"]["DependsOn"] = "RunBootstrapp"


def _wait_not_after_command(d):
    del d["Resources"]["WaitCondition"]["DependsOn"]


def _no_curl(d):
    cc = d["Resources"]["RunBootstrap"]["Properties"]["CommandContent"]["Fn::Sub"]
    cc[1]["NotifyB64"] = {"Fn::Base64Encode": "nothing"}


def _short_wait(d):
    d["Resources"]["WaitCondition"]["Properties"]["Timeout"] = 300


def _unknown_function(d):
    d["Outputs"]["PageUser"]["Value"] = {"Fn::Concat": ["a", "b"]}


MUTATIONS = [
    (_drop_vswitch, "Ref 'VSwitch'"),
    (_drop_handle, "Fn::GetAtt target 'WaitConditionHandle' is not a resource"),
    (_open_ssh, "opens '22/22'"),
    (_open_triton, "opens '8000/8002'"),
    (_world_open_page, "source must be the PageAccessCidr parameter"),
    (_password_default, "a NoEcho parameter must not have a Default"),
    (_page_password_echo, "a password must be NoEcho"),
    (_disk_range, "MaxValue is 2000, the product table says 500"),
    (_disk_default_outside, "Default 40 outside [MinValue, MaxValue]"),
    (_no_zone, "required property ZoneId is missing"),
    (_typo, "unknown property 'InstanceTyp'"),
    (_bad_attribute, "has no attribute 'InstanceId'"),
    (_sub_undefined, "${ServiceName} is not defined"),
    (_unused_parameter, "parameter Unused: never used"),
    (_not_on_page, "parameter PageAccessCidr is in no Metadata ParameterGroup"),
    (_other_family, "EcsInstanceType families"),
    (_loose_type_pattern, "EcsInstanceType pattern admits ecs.g7.large"),
    (_weak_password_rule, "InstancePassword rule"),
    (_unknown_setting, "deploy.env key MUSICGEN_TYPO is unknown to bootstrap.sh"),
    (_raw_password_in_script, "secret PagePassword is substituted into CommandContent"),
    (_base64_password_in_script, "secret PagePassword is substituted into CommandContent"),
    (_token_value_in_script, "only the secret's Name may travel"),
    (_token_in_user_data, "secret ApiToken is in UserData"),
    (_token_not_a_secret_parameter, "ApiToken must be the Value of an ALIYUN::OOS::SecretParameter"),
    (_role_reads_everything, "not one of the template's secret parameters"),
    (_role_may_write, "oos:UpdateSecretParameter is more than reading"),
    (_no_role, "RamRoleName must be the RoleName"),
    (_no_https, "no ingress rule for 443/443"),
    (_printed_secret, "a secret may only be decoded into a file"),
    (_traced, "must not trace"),
    (_endpoint_port, "must be https:// on port 443"),
    (_endpoint_plain_http, "must be https:// on port 443"),
    (_output_secret, "Outputs expose the NoEcho parameter PagePassword"),
    (_no_region_rule, "RegionId is the stack's region"),
    (_bad_depends, "DependsOn 'RunBootstrapp' is not a resource"),
    (_wait_not_after_command, "WaitCondition must DependsOn the RunCommand"),
    (_no_curl, "CurlCli"),
    (_short_wait, "WaitCondition Timeout"),
    (_unknown_function, "unknown function Fn::Concat"),
]


@pytest.mark.parametrize("mutate, expected", MUTATIONS, ids=[m.__name__.strip("_") for m, _ in MUTATIONS])
def test_checker_catches(template, mutate, expected):
    broken = copy.deepcopy(template)
    mutate(broken)
    findings = ros.check_template(broken)
    assert any(expected in f for f in findings), f"{expected!r} not in {findings}"


def test_password_rule_is_the_clouds(template):
    import re

    p = template["Parameters"]["InstancePassword"]
    for good in ros.PASSWORDS_GOOD:
        assert re.fullmatch(p["AllowedPattern"], good) and p["MinLength"] <= len(good) <= p["MaxLength"], good
    for bad in ros.PASSWORDS_BAD:
        assert not (re.fullmatch(p["AllowedPattern"], bad) and p["MinLength"] <= len(bad) <= p["MaxLength"]), bad


def test_stage0_script_passes_shellcheck(template):
    ok, out = tools.shellcheck(text=ros.stage0_script(template))
    assert ok, out
    # and shellcheck does read it: a broken copy fails
    ok, out = tools.shellcheck(text=ros.stage0_script(template).replace('"$src/.git"', "$src/.git ]"))
    assert not ok


def test_stage0_decodes_secrets_into_root_only_files(template):
    script = ros.stage0_script(template)
    assert script.index("umask 077") < script.index("base64 -d")
    assert "install -d -m 0700" in script
