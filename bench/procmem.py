"""Memory of a process tree from /proc (Linux): RSS and PSS, sampled in the background for the peak.

RSS summed over a tree counts shared pages (libraries, the model files mapped by several python
stubs) once per process, so it overstates; PSS (/proc/PID/smaps_rollup) splits shared pages
between the processes that map them, so the sum of PSS is the tree's real footprint. Both are kept.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def tree_pids(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _kb(path: Path, keys: tuple[str, ...]) -> dict[str, int]:
    res = {}
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in keys:
                res[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return res


def tree_memory(root: int) -> dict:
    """{'rss_mb', 'pss_mb', 'processes'} of `root` and all its descendants now."""
    rss = pss = 0
    pids = tree_pids(root)
    n = 0
    for pid in pids:
        s = _kb(Path(f"/proc/{pid}/status"), ("VmRSS",))
        if not s:
            continue
        n += 1
        rss += s.get("VmRSS", 0)
        p = _kb(Path(f"/proc/{pid}/smaps_rollup"), ("Pss",))
        pss += p.get("Pss", s.get("VmRSS", 0))
    return {"rss_mb": rss / 1024.0, "pss_mb": pss / 1024.0, "processes": n}


class PeakSampler:
    """Samples `tree_memory(pid)` every `interval` s in a thread; `peak` holds the maxima.

    `mark(label)` starts a new phase whose own peak is kept in `phases[label]`.
    A sample of the server tree costs ≈30 ms of CPU (smaps_rollup walks every process's pages):
    sampling every 0.25 s measurably slowed a request (≈6.4 → 7.2 s for a 5 s clip, 2 runs each);
    every 1 s did not.
    """

    def __init__(self, pid: int, interval: float = 1.0):
        self.pid, self.interval = pid, interval
        self.peak = {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0}
        self.phases: dict[str, dict] = {}
        self._phase: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mem-sampler")
        self._lock = threading.Lock()

    def _take(self) -> None:
        m = tree_memory(self.pid)
        with self._lock:
            for k in self.peak:
                self.peak[k] = max(self.peak[k], m[k])
            if self._phase is not None:
                ph = self.phases[self._phase]
                for k in ph:
                    ph[k] = max(ph[k], m[k])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not os.path.exists(f"/proc/{self.pid}"):
                return
            self._take()

    def mark(self, label: str) -> None:
        with self._lock:
            self._phase = label
            self.phases[label] = {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0}
        self._take()

    def __enter__(self):
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        time.sleep(0)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(stat_path: Path) -> float | None:
    """utime + stime of a /proc/.../stat, in seconds (None when the process or thread is gone)."""
    try:
        stat = stat_path.read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from `state` on: utime, stime are 12th, 13th
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_label(pid: int) -> str:
    """A Triton python stub by its model's name (its command line holds <model>/1/model.py), else the command."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    for a in args:
        if a.endswith(b"/model.py"):
            return Path(a.decode(errors="replace")).parent.parent.name
    return Path(args[0].decode(errors="replace")).name if args and args[0] else str(pid)


def tree_cpu(root: int) -> dict[str, dict]:
    """CPU seconds used so far by `root` and its descendants, by process label (the instances of one
    model summed): {"cpu_s", "processes", "threads": {tid: cpu_s}}. Subtract two snapshots (cpu_delta)
    to see where a request's CPU time went."""
    out: dict[str, dict] = {}
    for pid in tree_pids(root):
        total = _cpu_s(Path(f"/proc/{pid}/stat"))
        if total is None:
            continue
        threads = {}
        try:
            for t in Path(f"/proc/{pid}/task").iterdir():
                s = _cpu_s(t / "stat")
                if s is not None:
                    threads[t.name] = s
        except OSError:
            pass
        entry = out.setdefault(process_label(pid), {"cpu_s": 0.0, "processes": 0, "threads": {}})
        entry["cpu_s"] += total
        entry["processes"] += 1
        entry["threads"].update(threads)
    return out


def cpu_delta(before: dict, after: dict, top_threads: int = 3) -> dict[str, dict]:
    """Per process label that used CPU: seconds between two tree_cpu snapshots, how many threads used
    CPU in between, and the busiest threads' seconds (a spinning thread pool shows as many busy threads)."""
    out = {}
    for label, a in after.items():
        b = before.get(label, {"cpu_s": 0.0, "threads": {}})
        per_thread = sorted((s - b["threads"].get(tid, 0.0) for tid, s in a["threads"].items()), reverse=True)
        busy = [s for s in per_thread if s >= 0.01]
        used = round(a["cpu_s"] - b["cpu_s"], 3)
        if used > 0 or busy:
            out[label] = {
                "cpu_s": used,
                "threads_busy": len(busy),
                "top_threads_s": [round(s, 3) for s in busy[:top_threads]],
            }
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_s"]))
