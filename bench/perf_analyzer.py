"""Triton-level numbers with NVIDIA's `perf_analyzer`.

The PyPI `perf-analyzer` wheels (2.58+) need a newer glibc than Debian 12; the
`tritonclient==2.51.0` manylinux1 wheel carries a working binary under `*.data/data/bin/`.
`ensure_perf_analyzer()` downloads that wheel once (`pip download --no-deps`) into a cache dir,
extracts the binary and links the two libraries it needs (libb64, libcudart) from the
`nvidia_pytriton.libs` folder of the installed nvidia-pytriton wheel under their plain sonames.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

WHEEL = "tritonclient==2.51.0"
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / ".work" / "perf_analyzer"


class PerfAnalyzerUnavailable(RuntimeError):
    pass


def _libs_dir() -> Path:
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        d = Path(base) / "nvidia_pytriton.libs"
        if d.is_dir():
            return d
    raise PerfAnalyzerUnavailable("nvidia_pytriton.libs not found: install the 'serve' extra (nvidia-pytriton)")


def ensure_perf_analyzer(cache_dir: Path | None = None, timeout: float = 300.0) -> tuple[Path, dict]:
    """(path to the perf_analyzer binary, environment to run it with). Downloads on first use."""
    cache = Path(cache_dir or os.environ.get("MUSICGEN_PERF_ANALYZER_CACHE", DEFAULT_CACHE))
    binary = cache / "bin" / "perf_analyzer"
    lib = cache / "lib"
    libs = _libs_dir()
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        wheels = sorted(cache.glob("tritonclient-2.51.0-*.whl"))
        if not wheels:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    WHEEL,
                    "--no-deps",
                    "-q",
                    "--only-binary=:all:",
                    "--platform",
                    "manylinux1_x86_64",
                    "-d",
                    str(cache),
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            wheels = sorted(cache.glob("tritonclient-2.51.0-*.whl"))
            if proc.returncode != 0 or not wheels:
                raise PerfAnalyzerUnavailable(f"pip download {WHEEL} failed: {proc.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(".data/data/bin/perf_analyzer")), None)
            if member is None:
                raise PerfAnalyzerUnavailable(f"{wheels[0].name} has no perf_analyzer binary")
            binary.parent.mkdir(parents=True, exist_ok=True)
            tmp = binary.with_suffix(".tmp")
            tmp.write_bytes(zf.read(member))
            tmp.chmod(0o755)
            tmp.replace(binary)
    lib.mkdir(parents=True, exist_ok=True)
    for soname, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
        found = sorted(libs.glob(pattern))
        if not found:
            raise PerfAnalyzerUnavailable(f"{pattern} missing from {libs}")
        link = lib / soname
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[0])
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    return binary, env


def input_data(path: Path, prompt: str, duration: float, seed: int = 1) -> Path:
    """perf_analyzer --input-data JSON for `musicgen`: every input given, so no random values are sent."""
    data = {
        "data": [
            {
                "prompt": {"content": [prompt], "shape": [1]},
                "duration": [duration],
                "top_k": [250],
                "top_p": [0.0],
                "temperature": [1.0],
                "guidance_scale": [3.0],
                "seed": [seed],
            }
        ]
    }
    path.write_text(json.dumps(data))
    return path


def run(
    endpoint: str,
    model: str,
    out_dir: Path,
    *,
    protocol: str = "grpc",
    concurrency: str = "1",
    data: Path | None = None,
    request_count: int = 10,
    max_trials: int = 5,
    timeout: float = 300.0,
    cache_dir: Path | None = None,
    stability: int = 25,
    relaxed_stability: int | None = 50,
) -> dict:
    """Run perf_analyzer (count_windows, stability 25 %, as a 2-core host needs); parse its CSV.

    When no concurrency level reaches a stable measurement (a busy host), it is run once more with
    `relaxed_stability` % and twice the trials; the result records which percentage produced it.
    """
    res = _run_once(
        endpoint, model, out_dir, protocol, concurrency, data, request_count, max_trials, timeout, cache_dir, stability
    )
    if not res["rows"] and res.get("unstable_all") and relaxed_stability:
        res = _run_once(
            endpoint,
            model,
            out_dir,
            protocol,
            concurrency,
            data,
            request_count,
            2 * max_trials,
            timeout,
            cache_dir,
            relaxed_stability,
        )
    return res


def _run_once(
    endpoint, model, out_dir, protocol, concurrency, data, request_count, max_trials, timeout, cache_dir, stability
) -> dict:
    binary, env = ensure_perf_analyzer(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"perf_analyzer_{model}.csv"
    if csv_path.exists():
        csv_path.unlink()
    cmd = [
        str(binary),
        "-m",
        model,
        "-u",
        endpoint,
        "-i",
        protocol,
        "--concurrency-range",
        concurrency,
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(request_count),
        "--stability-percentage",
        str(stability),
        "--max-trials",
        str(max_trials),
        "-f",
        str(csv_path),
    ]
    if data is not None:
        cmd += ["--input-data", str(data)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": model, "command": " ".join(cmd), "error": f"timed out after {timeout:g} s", "rows": []}
    (out_dir / f"perf_analyzer_{model}.log").write_text(proc.stdout + proc.stderr)
    rows = []
    if csv_path.exists():
        with csv_path.open() as f:
            for r in csv.DictReader(f):
                rows.append(
                    {
                        "concurrency": int(r["Concurrency"]),
                        "infer_per_s": float(r["Inferences/Second"]),
                        "p50_ms": float(r["p50 latency"]) / 1000.0,
                        "p95_ms": float(r["p95 latency"]) / 1000.0,
                        "p99_ms": float(r["p99 latency"]) / 1000.0,
                        "server_queue_ms": float(r["Server Queue"]) / 1000.0,
                        "server_compute_ms": float(r["Server Compute Infer"]) / 1000.0,
                        "network_server_ms": float(r["Network+Server Send/Recv"]) / 1000.0,
                    }
                )
    text = proc.stdout + proc.stderr
    unstable = sorted({line.strip() for line in text.splitlines() if "Failed to obtain stable" in line})
    return {
        "model": model,
        "command": " ".join(cmd),
        "returncode": proc.returncode,
        "rows": rows,
        "stability_percentage": stability,
        "unstable": unstable,
        "unstable_all": not rows and bool(unstable),
        "error": None if rows else text.strip()[-500:],
    }
