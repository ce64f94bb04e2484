"""Process liveness from /proc (stdlib only): shared by the server launcher and the exporter's staging cleanup."""

from __future__ import annotations

import os
from pathlib import Path


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, pgrp) from /proc/<pid>/stat, or None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies count as dead: nothing may reap them here)."""
    if pid <= 0:
        return False
    st = proc_stat(pid)
    if st is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not Path("/proc").is_dir()  # no procfs: trust kill(0)
    return st[0] not in ("Z", "X")
