"""shellcheck on every script of deploy/ and yamllint on its YAML, and that both linters really
report problems (a check that cannot fail is no check)."""

from __future__ import annotations

from deploy.checks import DEPLOY_DIR, tools


def test_every_script_is_found():
    names = {p.relative_to(DEPLOY_DIR).as_posix() for p in tools.shell_scripts()}
    assert {"host/bootstrap.sh", "host/wait-ready.sh", "docker/export-entrypoint.sh"} <= names


def test_shellcheck_passes_on_every_script():
    ok, out = tools.shellcheck()
    assert ok, out


def test_scripts_run_with_bash_e_and_strict_mode():
    for p in tools.shell_scripts():
        text = p.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), p
        assert "set -Eeuo pipefail" in text, p


def test_shellcheck_reports_a_bad_script(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $DIR/*\n")
    ok, out = tools.shellcheck([bad])
    assert not ok and ("SC2086" in out or "SC2115" in out)


def test_yamllint_passes():
    ok, out = tools.yamllint()
    assert ok, out


def test_yamllint_reports_a_duplicate_key():
    ok, out = tools.yamllint(text="services:\n  ui:\n    image: a\n  ui:\n    image: b\n")
    assert not ok and "duplicate" in out


def test_the_whole_report_passes():
    """python -m deploy.checks, as a user would run it."""
    import subprocess
    import sys

    from deploy.checks import REPO_ROOT

    r = subprocess.run(
        [sys.executable, "-m", "deploy.checks"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout
