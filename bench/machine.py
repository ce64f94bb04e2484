"""The machine a benchmark ran on: every figure and every ratio against the reference belongs to it.

The reference's speed depends on the CPU vendor and model (torch's MKL and oneDNN pick code paths by
CPU), so a run records the CPU (lscpu: model name, vendor, cores, the vector and matrix flags that
select kernels), the libraries' builds (onnxruntime here; torch's BLAS/oneDNN lines from the
reference's own process, where torch is imported) and the memory read rate the run measured.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess

# CPU flags that change which kernels MLAS, MKL and oneDNN run
FLAGS_OF_INTEREST = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def lscpu() -> dict:
    """lscpu's fields as a dict ({} when lscpu is missing); /proc/cpuinfo's flags when lscpu has none."""
    try:
        text = subprocess.run(
            ["lscpu"], check=False, capture_output=True, text=True, timeout=20, env={**os.environ, "LC_ALL": "C"}
        ).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if "Flags" not in fields:
        try:
            with open("/proc/cpuinfo") as f:
                m = re.search(r"^flags\s*:\s*(.*)$", f.read(), re.MULTILINE)
            fields["Flags"] = m.group(1) if m else ""
        except OSError:
            fields["Flags"] = ""
    return fields


def describe(read_gbps: float | None = None) -> dict:
    """The CPU, the core count, the flags of interest, onnxruntime's version and providers, the memory
    read rate (GB/s) when measured, and the thread/BLAS environment variables that were set."""
    f = lscpu()
    flags = set(f.get("Flags", "").split())
    try:
        import onnxruntime as ort

        ort_info = {"version": ort.__version__, "providers": ort.get_available_providers()}
    except ImportError:
        ort_info = None
    return {
        "cpu_model": f.get("Model name") or platform.processor() or None,
        "cpu_vendor": f.get("Vendor ID"),
        "cpu_family": f.get("CPU family"),
        "cpu_model_number": f.get("Model"),
        "cpus": os.cpu_count(),
        "cores_per_socket": _int(f.get("Core(s) per socket")),
        "sockets": _int(f.get("Socket(s)")),
        "threads_per_core": _int(f.get("Thread(s) per core")),
        "hypervisor": f.get("Hypervisor vendor"),
        "l3_cache": f.get("L3 cache"),
        "flags": [x for x in FLAGS_OF_INTEREST if x in flags],
        "onnxruntime": ort_info,
        "numpy": __import__("numpy").__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_read_gbps": read_gbps,
        "environment": library_environment(),
    }


def library_environment() -> dict:
    """The environment variables that steer the math libraries' threads and code paths, as set."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("OMP_", "MKL_", "OPENBLAS_", "DNNL_", "ONEDNN_", "ATEN_", "GOMP_", "KMP_", "GLIBC_TUNABLES"))
    }


def torch_build() -> dict:
    """torch's version, threads and the BLAS / oneDNN / CPU-capability lines of its build (call it in the
    process that runs torch: the reference's)."""
    import torch

    show = torch.__config__.show()
    keep = ("Math Kernel Library", "MKL-DNN", "oneDNN", "OpenMP", "CPU capability", "BLAS", "LAPACK")
    lines = [ln.strip(" -") for ln in show.splitlines() if any(k in ln for k in keep) and "Build settings" not in ln]
    blas = re.search(r"BLAS_INFO=(\w+)", show)
    return {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "blas": blas.group(1) if blas else None,
        "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "build": lines,
    }


def label(m: dict) -> str:
    """One line naming the machine, for tables and speed-up claims."""
    flags = ", ".join(x for x in m.get("flags", []) if x.startswith(("avx512f", "amx_tile"))) or "no AVX-512/AMX"
    read = f", read {m['memory_read_gbps']:.1f} GB/s" if m.get("memory_read_gbps") else ""
    kind = m.get("cpu_vendor") or "?"
    if m.get("cpu_family"):
        kind += f" family {m['cpu_family']} model {m.get('cpu_model_number')}"
    return f"{m.get('cpu_model') or 'unknown CPU'} ({kind}), {m.get('cpus')} CPUs, {flags}{read}"


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
