"""The client's command line run as a user runs it: `python -m client.cli ...` in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m client.cli *args` from the project's root, its output captured as text (not checked)."""
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
