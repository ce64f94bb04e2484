"""deploy/host/bootstrap.sh really runs here: dry runs on fake fresh / provisioned hosts, its
validation, the page-password step for real (with a bcrypt htpasswd stand-in), the failure report
to the cloud's wait condition, and that no secret reaches the output or the log, even under -x."""

from __future__ import annotations

import re
import subprocess
import time

import bcrypt
import pytest

from deploy_fakes import NOTIFY_SECRET, PASSWORD, REPO, git_checkout, write_exe

WAIT_READY = REPO / "deploy" / "host" / "wait-ready.sh"

# htpasswd stand-in (apache2-utils is not installed here): -niB -C N user, -vi file user; password on stdin.
HTPASSWD = """
    #!{python}
    import sys, bcrypt
    args = sys.argv[1:]
    pw = sys.stdin.readline().rstrip("\\n").encode()
    if args[0] == "-niB":
        cost = int(args[2]) if args[1] == "-C" else 5
        print(args[-1] + ":" + bcrypt.hashpw(pw, bcrypt.gensalt(cost)).decode().replace("$2b$", "$2y$", 1))
    elif args[0] == "-vi":
        user, _, h = open(args[1]).read().strip().partition(":")
        sys.exit(0 if user == args[2] and bcrypt.checkpw(pw, h.replace("$2y$", "$2b$", 1).encode()) else 3)
    else:
        sys.exit(2)
"""


def plan_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("PLAN ", "SKIP "))]


def assert_in_order(lines: list[str], expected: list[str]):
    pos = 0
    for want in expected:
        for i in range(pos, len(lines)):
            if want in lines[i]:
                pos = i + 1
                break
        else:
            raise AssertionError(f"{want!r} not found (in order) in plan:\n" + "\n".join(lines))


def test_dry_run_on_a_fresh_host_plans_every_step_and_changes_nothing(secrets):
    host = secrets
    env = host.env_file()
    before = host.tree()
    r = host.run("--dry-run", env_file=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = plan_lines(r.stdout)
    assert_in_order(
        lines,
        [
            "SKIP cloud_init: cloud-init is not installed",
            "PLAN packages: run: apt_update",
            "PLAN packages: run: apt_install ca-certificates curl git gnupg apache2-utils python3",
            "nvidia-headless-570-server nvidia-utils-570-server",
            "PLAN driver: run: modprobe nvidia",
            "PLAN driver: reboot once",
            "PLAN docker: run: apt_install docker.io docker-compose-v2",
            "PLAN docker: run: systemctl enable --now docker",
            "PLAN nvidia_ctk: run: add_nvidia_ctk_repo https://nvidia.github.io/libnvidia-container",
            "PLAN nvidia_ctk: run: apt_install nvidia-container-toolkit",
            "PLAN nvidia_ctk: run: nvidia-ctk runtime configure --runtime=docker",
            "PLAN nvidia_ctk: run: systemctl restart docker",
            "PLAN source: run: git clone --depth 1 --branch main https://example.invalid/musicgen-triton.git",
            "PLAN page_auth: hash the page password",
            "PLAN compose_env: write",
            "PLAN images: run: compose --profile export build --pull",
            "PLAN export: run: compose --profile export run --rm export",
            "PLAN service: write",
            "PLAN service: run: systemctl enable musicgen.service",
            "PLAN service: run: systemctl restart musicgen.service",
            "PLAN readiness: wait up to 1800s for http://127.0.0.1:8000/v2/health/ready",
            "PLAN readiness: run",
            "PLAN finish: signal the cloud wait condition: SUCCESS",
        ],
    )
    assert any(
        re.fullmatch(
            r"PLAN driver: run: apt_install linux-headers-\S+ nvidia-headless-570-server "
            r"nvidia-utils-570-server",
            line,
        )
        for line in lines
    )
    # apt-get update planned once, not once per step
    assert sum("run: apt_update" in line for line in lines) == 1 + 1  # base index, then the NVIDIA repo's
    assert r.stdout.rstrip().endswith("DRY RUN complete")
    assert host.tree() == before, "a dry run must not create, change or delete anything"


def test_dry_run_on_a_provisioned_host_skips_what_is_there(secrets):
    host = secrets.provisioned()
    src = host.root / "opt-musicgen" / "src"
    commit = git_checkout(src)
    host.password_file.unlink()
    (host.etc / "page-auth.caddy").write_text("basic_auth {\n\tmusicgen $2y$12$abc\n}\n")
    host.state.mkdir()
    (host.state / "export.stamp").write_text(f"facebook/musicgen-small fp16 {commit}\n")
    env = host.env_file(MUSICGEN_SOURCE_REPO="")
    before = host.tree()
    r = host.run("--dry-run", env_file=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = plan_lines(r.stdout)
    assert_in_order(
        lines,
        [
            "PLAN cloud_init: run: cloud-init status --wait",
            "SKIP packages: base packages present",
            "SKIP driver: NVIDIA driver loaded (NVIDIA A10, 570.86.15)",
            "SKIP docker: docker engine running with compose",
            "SKIP nvidia_ctk: nvidia-container-toolkit present",
            "SKIP nvidia_ctk: docker already has the nvidia runtime",
            f"SKIP source: using the checkout in {src} as it is ({commit})",
            "SKIP page_auth: page password already set",
            f"SKIP images: images for {commit[:12]} present",
            "SKIP export: weights for facebook/musicgen-small (fp16) already exported",
            "PLAN service: run: systemctl enable musicgen.service",
        ],
    )
    assert not any("apt_install" in line or "apt_update" in line for line in lines)
    assert host.tree() == before


def test_changing_the_checkpoint_re_exports(secrets):
    host = secrets.provisioned()
    commit = git_checkout(host.root / "opt-musicgen" / "src")
    host.state.mkdir()
    (host.state / "export.stamp").write_text(f"facebook/musicgen-small fp16 {commit}\n")
    r = host.run(
        "--dry-run", "--only", "export", env_file=host.env_file(MUSICGEN_CHECKPOINT="facebook/musicgen-medium")
    )
    assert r.returncode == 0, r.stderr
    assert "PLAN export: run: compose --profile export run --rm export" in r.stdout


@pytest.mark.parametrize(
    "os_release, message",
    [
        ('ID=debian\nVERSION_ID="12"\n', "unsupported OS 'debian 12'"),
        ('ID=ubuntu\nVERSION_ID="20.04"\n', "unsupported OS 'ubuntu 20.04'"),
    ],
)
def test_unsupported_os_stops_before_changing_anything(secrets, os_release, message):
    secrets.os_release.write_text(os_release)
    r = secrets.run("--dry-run")
    assert r.returncode != 0
    assert message in r.stderr
    assert "PLAN" not in r.stdout


def test_a_host_without_an_nvidia_gpu_is_refused(secrets):
    (secrets.pci / "0000:00:07.0" / "vendor").write_text("0x8086\n")
    r = secrets.run("--dry-run")
    assert r.returncode != 0 and "no NVIDIA GPU" in r.stderr
    r = secrets.run("--dry-run", env_file=secrets.env_file(MUSICGEN_REQUIRE_GPU="0"))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MUSICGEN_CHECKPOINT", "$(touch {marker})", "MUSICGEN_CHECKPOINT must be a hub id"),
        ("MUSICGEN_CHECKPOINT", "facebook/musicgen-small; touch {marker}", "MUSICGEN_CHECKPOINT must be a hub id"),
        ("MUSICGEN_PRECISION", "int4", "MUSICGEN_PRECISION must be fp16 or fp32"),
        ("MUSICGEN_PAGE_PORT", "70000", "MUSICGEN_PAGE_PORT must be a TCP port"),
        ("MUSICGEN_SOURCE_REPO", "http://insecure.example/x.git", "MUSICGEN_SOURCE_REPO must be an https://"),
        ("MUSICGEN_SOURCE_REF", "main`touch {marker}`", "MUSICGEN_SOURCE_REF must be a branch"),
        ("PATH", "/tmp/evil", "unknown key PATH"),
    ],
)
def test_settings_are_validated_never_evaluated(secrets, key, value, message):
    marker = secrets.root / "pwned"
    r = secrets.run("--dry-run", env_file=secrets.env_file(**{key: value.format(marker=marker)}))
    assert r.returncode != 0
    assert message in r.stderr
    assert not marker.exists()


def test_quoted_values_and_comments_in_the_env_file(secrets):
    env = secrets.env_file()
    env.write_text(env.read_text() + "\n# comment\nMUSICGEN_CHECKPOINT='facebook/musicgen-medium'\n")
    r = secrets.run("--dry-run", "--only", "preflight", env_file=env)
    assert r.returncode == 0, r.stderr
    assert "checkpoint facebook/musicgen-medium (fp16)" in r.stdout


def test_no_page_password_means_no_deployment(host):
    r = host.run("--dry-run")
    assert r.returncode != 0
    assert "no page password" in r.stderr
    assert "DRY RUN FAILED at step page_auth" in r.stderr


def test_unknown_step_is_refused(secrets):
    r = secrets.run("--dry-run", "--only", "preflight,teleport")
    assert r.returncode != 0 and "unknown step teleport" in r.stderr


@pytest.fixture
def htpasswd(secrets):
    import sys

    write_exe(secrets.stubs / "htpasswd", HTPASSWD.replace("{python}", sys.executable))
    return secrets


def test_page_auth_writes_a_root_only_bcrypt_hash_and_logs_no_password(htpasswd):
    host = htpasswd
    log = host.root / "log" / "bootstrap.log"
    r = host.run("--only", "page_auth", "--log-file", str(log), extra_env={"MUSICGEN_ALLOW_NON_ROOT": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    auth = host.etc / "page-auth.caddy"
    assert oct(auth.stat().st_mode & 0o777) == "0o600"
    text = auth.read_text()
    m = re.fullmatch(r"basicauth \{\n\tmusicgen (\$2y\$12\$\S{53})\n\}\n", text)
    assert m, text
    assert bcrypt.checkpw(PASSWORD.encode(), m.group(1).replace("$2y$", "$2b$", 1).encode())
    assert not bcrypt.checkpw(b"wrong-password", m.group(1).replace("$2y$", "$2b$", 1).encode())
    for blob in (r.stdout, r.stderr, log.read_text()):
        assert PASSWORD not in blob
    # idempotent: the same password is recognised, the file is left alone
    r2 = host.run("--only", "page_auth", extra_env={"MUSICGEN_ALLOW_NON_ROOT": "1"})
    assert r2.returncode == 0 and "SKIP page_auth: page password unchanged" in r2.stdout
    assert auth.read_text() == text
    # a new password is hashed again
    host.password_file.write_text("Another-pass-9911\n")
    r3 = host.run("--only", "page_auth", extra_env={"MUSICGEN_ALLOW_NON_ROOT": "1"})
    assert r3.returncode == 0 and auth.read_text() != text


def test_a_short_page_password_is_refused(htpasswd):
    htpasswd.password_file.write_text("short\n")
    r = htpasswd.run("--only", "page_auth", extra_env={"MUSICGEN_ALLOW_NON_ROOT": "1"})
    assert r.returncode != 0 and "shorter than 8 characters" in r.stderr
    assert not (htpasswd.etc / "page-auth.caddy").exists()


def test_xtrace_never_shows_the_password(htpasswd):
    r = htpasswd.run("--only", "page_auth", xtrace=True, extra_env={"MUSICGEN_ALLOW_NON_ROOT": "1"})
    assert r.returncode == 0, r.stderr
    assert "+ set +x" in r.stderr  # tracing was on and got switched off around the secret
    assert PASSWORD not in r.stdout + r.stderr


def test_a_failure_is_reported_to_the_wait_condition_without_leaking_its_url(secrets):
    host = secrets
    calls = host.curl_calls
    host.os_release.write_text('ID=centos\nVERSION_ID="7"\n')
    log = host.root / "bootstrap.log"
    r = host.run("--log-file", str(log), xtrace=True, extra_env={"MUSICGEN_ALLOW_NON_ROOT": "1"})
    assert r.returncode != 0
    sent = calls.read_text()
    assert f"https://ros.example.invalid/waitcondition?sig={NOTIFY_SECRET}" in sent  # signalled the handle
    assert '"status": "FAILURE"' in sent and "failed at step preflight" in sent
    assert (host.state / "bootstrap.status").read_text().startswith("FAILURE step=preflight")
    for blob in (r.stdout, r.stderr, log.read_text()):
        assert NOTIFY_SECRET not in blob


def wait_ready(state_dir, timeout="5", interval="0.1", log=None):
    env = {
        "PATH": "/usr/bin:/bin",
        "MUSICGEN_STATE_DIR": str(state_dir),
        "MUSICGEN_WAIT_INTERVAL": interval,
        "MUSICGEN_LOG_FILE": str(log or state_dir / "none.log"),
    }
    return subprocess.run(["bash", "-e", str(WAIT_READY), timeout], capture_output=True, text=True, env=env, timeout=30)


def test_wait_ready_follows_the_bootstrap_status(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    log = tmp_path / "bootstrap.log"
    log.write_text("step 1\nstep 2 went wrong\n")
    t0 = time.monotonic()
    r = wait_ready(state, timeout="1", log=log)
    assert r.returncode == 1 and "not ready after 1s" in r.stderr and "step 2 went wrong" in r.stderr
    assert time.monotonic() - t0 < 10
    (state / "bootstrap.status").write_text("RUNNING\n")
    assert wait_ready(state, timeout="1").returncode == 1
    (state / "bootstrap.status").write_text("FAILURE step=export\n")
    r = wait_ready(state, log=log)
    assert r.returncode == 1 and "step=export" in r.stderr and "step 2 went wrong" in r.stderr
    (state / "bootstrap.status").write_text("SUCCESS http://198.51.100.10/\n")
    r = wait_ready(state)
    assert r.returncode == 0 and "ready (http://198.51.100.10/)" in r.stdout


def test_the_unit_runs_the_installed_bootstrap_until_it_has_succeeded():
    from deploy.checks import cloudinit, ros

    unit = (REPO / "deploy" / "host" / "systemd" / "musicgen-bootstrap.service").read_text()
    assert "ConditionPathExists=!/var/lib/musicgen/bootstrap.done" in unit
    assert cloudinit.unit_exec_path() == cloudinit.BOOTSTRAP_PATH == "/opt/musicgen/bin/bootstrap.sh"
    # the ROS stage 0 installs the bootstrap where the unit runs it
    assert f'install -D -m 0755 "$src/deploy/host/bootstrap.sh" {cloudinit.BOOTSTRAP_PATH}' in ros.stage0_script(
        ros.load()
    )
    # the bootstrap marks success where the unit's condition looks
    assert "MUSICGEN_STATE_DIR:=/var/lib/musicgen" in (REPO / "deploy" / "host" / "bootstrap.sh").read_text()
    assert "bootstrap.done" in (REPO / "deploy" / "host" / "bootstrap.sh").read_text()
