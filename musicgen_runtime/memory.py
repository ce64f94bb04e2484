"""Memory pages for the LM: huge pages for the weights, small lazily committed pages for the KV cache.

Weights: ONNX Runtime packs MatMul weights into memory it allocates with malloc. Asking glibc to back
its large allocations with transparent huge pages (tunable ``glibc.malloc.hugetlb=1``, read once at
process start, so it is set in the environment of the processes that load the graphs) made the int8
decode step ≈8 % faster for one request and ≈14 % for eight on our 2-core VM: a step streams hundreds
of MB of weights, and 2 MiB pages cost far fewer TLB misses than 4 KiB ones. Initializers ONNX Runtime
does not repack stay mapped from the graph's data file in 4 KiB pages; our Int8BlockGemv copies its
weights onto 2 MiB pages itself (cpu_kernels/hugepage_copy.h).

KV cache: reserved for the longest request and committed only where written (np.zeros semantics). It
must not get huge pages: with [rows, heads, capacity, head_dim] a 2 MiB page spans several heads'
whole capacity, so the first written position would commit all of it. `lazy_zeros` asks for small
pages explicitly, whatever the tunable or the host's THP policy.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

HUGEPAGE_MALLOC = "glibc.malloc.hugetlb=1"
OPT_OUT = "MUSICGEN_HUGEPAGE_MALLOC"  # "0" leaves malloc as it is


def with_hugepage_malloc(env: dict[str, str]) -> dict[str, str]:
    """`env` with glibc's huge-page malloc tunable added to GLIBC_TUNABLES (unless opted out)."""
    env = dict(env)
    if env.get(OPT_OUT, "1") == "0":
        return env
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):
        tunables.append(HUGEPAGE_MALLOC)
    env["GLIBC_TUNABLES"] = ":".join(tunables)
    return env


def hugepage_malloc_active() -> bool:
    return HUGEPAGE_MALLOC in os.environ.get("GLIBC_TUNABLES", "").split(":")


def lazy_zeros(shape, dtype) -> np.ndarray:
    """A zeroed, writable array in 4 KiB pages that the OS commits only when first written
    (anonymous mmap, MADV_NOHUGEPAGE)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # as np.zeros: private pages
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype).reshape(shape)  # the array keeps the mapping alive


def reexec_with_hugepage_malloc(module: str) -> None:
    """Re-run `python -m module <same args>` with the tunable when this process started without it
    (glibc reads it only at start), so in-process measurements use the server's memory setting.
    Returns only when nothing had to change."""
    import sys

    env = with_hugepage_malloc(dict(os.environ))
    if env.get("GLIBC_TUNABLES") != os.environ.get("GLIBC_TUNABLES"):
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
