"""Helpers for the offline deploy checks: a fake host for bootstrap.sh (stub commands on PATH,
settings pointing into a temp dir), so the script really runs without touching this machine."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BOOTSTRAP = REPO / "deploy" / "host" / "bootstrap.sh"
PASSWORD = "Pg-pass-8fK2-unique-7731"
NOTIFY_SECRET = "SIG-9c1f-unique-secret"


def write_exe(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class FakeHost:
    """A temp dir standing in for / of a GPU host; `state` picks what is already installed."""

    def __init__(self, root: Path):
        self.root = root
        self.stubs = root / "stubs"
        self.stubs.mkdir()
        self.etc = root / "etc-musicgen"
        self.etc.mkdir()
        self.state = root / "var-lib-musicgen"
        self.pci = root / "pci"
        (self.pci / "0000:00:07.0").mkdir(parents=True)
        (self.pci / "0000:00:07.0" / "vendor").write_text("0x10de\n")
        (self.pci / "0000:00:01.0").mkdir()
        (self.pci / "0000:00:01.0" / "vendor").write_text("0x1af4\n")
        self.os_release = root / "os-release"
        self.os_release.write_text('NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="22.04"\n')
        self.password_file = self.etc / "page-password"
        self.notify_file = self.etc / "ros-notify"
        self.settings = {
            "MUSICGEN_CHECKPOINT": "facebook/musicgen-small",
            "MUSICGEN_SOURCE_REPO": "https://example.invalid/musicgen-triton.git",
            "MUSICGEN_ROOT": str(root / "opt-musicgen"),
            "MUSICGEN_ETC_DIR": str(self.etc),
            "MUSICGEN_STATE_DIR": str(self.state),
            "MUSICGEN_SYSTEMD_DIR": str(root / "systemd"),
            "MUSICGEN_OS_RELEASE": str(self.os_release),
            "MUSICGEN_SYSFS_PCI": str(self.pci),
            "MUSICGEN_DOCKER_DAEMON_JSON": str(root / "docker-daemon.json"),
            "MUSICGEN_PAGE_PASSWORD_FILE": str(self.password_file),
            "MUSICGEN_NOTIFY_FILE": str(self.notify_file),
            "MUSICGEN_MIN_FREE_GB": "1",
            "MUSICGEN_PUBLIC_URL": "http://198.51.100.10/",
        }
        # a fresh host: no driver, docker or toolkit; apt knows the 570 driver; nothing installed
        write_exe(
            self.stubs / "apt-cache",
            """
            #!/bin/sh
            [ "$1" = show ] && [ "$2" = nvidia-headless-570-server ] && exit 0
            exit 100
        """,
        )
        write_exe(self.stubs / "dpkg-query", "#!/bin/sh\nexit 1\n")
        # no network from the tests: curl records its arguments instead
        self.curl_calls = root / "curl-calls"
        write_exe(
            self.stubs / "curl",
            f"""
            #!/bin/sh
            for a in "$@"; do printf '%s\\n' "$a"; done >> {self.curl_calls}
            exit 0
        """,
        )

    def provisioned(self):
        """Driver, docker + compose (with images), toolkit, nvidia runtime, base packages."""
        write_exe(
            self.stubs / "nvidia-smi",
            """
            #!/bin/sh
            case "$*" in
              *query-gpu*) echo "NVIDIA A10, 570.86.15" ;;
              *) echo "GPU 0: NVIDIA A10 (UUID: GPU-0)" ;;
            esac
        """,
        )
        write_exe(
            self.stubs / "docker",
            """
            #!/bin/sh
            case "$1 $2" in
              "version --format") echo 27.5.1 ;;
              "compose version") echo 2.32.4 ;;
              "image inspect") exit 0 ;;
              *) echo "unexpected docker $*" >&2; exit 3 ;;
            esac
        """,
        )
        write_exe(self.stubs / "nvidia-ctk", "#!/bin/sh\necho 'NVIDIA Container Toolkit CLI version 1.17.4'\n")
        write_exe(self.stubs / "cloud-init", "#!/bin/sh\nexit 0\n")
        write_exe(self.stubs / "dpkg-query", "#!/bin/sh\nprintf 'install ok installed'\n")
        Path(self.settings["MUSICGEN_DOCKER_DAEMON_JSON"]).write_text(
            '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}\n'
        )
        return self

    def env_file(self, **overrides) -> Path:
        settings = {**self.settings, **overrides}
        path = self.root / "deploy.env"
        path.write_text("# written by the test\n" + "".join(f"{k}={v}\n" for k, v in settings.items() if v is not None))
        return path

    def tree(self) -> dict:
        """Every file under the fake root (except the stubs) with its content: to prove a dry run changed nothing."""
        out = {}
        for p in sorted(self.root.rglob("*")):
            if p.is_file() and self.stubs not in p.parents:
                out[str(p)] = p.read_bytes()
            elif p.is_dir():
                out[str(p)] = None
        return out

    def run(
        self,
        *args,
        env_file: Path | None = None,
        xtrace: bool = False,
        extra_env: dict | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess:
        env = {"PATH": f"{self.stubs}:/usr/bin:/bin", "HOME": str(self.root), "LANG": "C.UTF-8"}
        env.update(extra_env or {})
        cmd = ["bash", "-e"] + (["-x"] if xtrace else []) + [str(BOOTSTRAP)]
        cmd += ["--env-file", str(env_file or self.env_file()), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=self.root)


def git_checkout(path: Path) -> str:
    """A real git checkout standing in for the project source; returns its commit."""
    path.mkdir(parents=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    subprocess.run(["git", "init", "-q", str(path)], check=True, env=env)
    (path / "README").write_text("source\n")
    subprocess.run(["git", "-C", str(path), "add", "README"], check=True, env=env)
    subprocess.run(["git", "-C", str(path), "commit", "-q", "-m", "x"], check=True, env=env)
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
