"""Huge pages for the weights' mallocs, small lazily committed pages for the KV cache (musicgen_runtime.memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from musicgen_runtime import memory

# In a child: is the VMA holding a large malloc, and the one holding a
# lazy_zeros buffer, eligible for transparent huge pages? And does lazy_zeros commit only what is written?
PROBE = r"""
import json, sys
import numpy as np
from musicgen_runtime import memory

def vma(addr):
    lines = open("/proc/self/smaps").read().splitlines()
    for i, line in enumerate(lines):
        head = line.split()
        if "-" in head[0] and all(c in "0123456789abcdef-" for c in head[0]):
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            if lo <= addr < hi:
                block = {}
                for row in lines[i + 1:]:
                    if "-" in row.split()[0] and ":" not in row.split()[0]:
                        break
                    k, _, v = row.partition(":")
                    block[k] = v.strip()
                return block
    raise SystemExit("address not mapped")

import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
big_size = 64 << 20
big = libc.malloc(big_size)  # plain glibc malloc, as ONNX Runtime allocates its weights (numpy madvises on its own)
ctypes.memset(big, 1, big_size)
cache = memory.lazy_zeros((16, 1 << 20), np.float32)  # 64 MiB reserved
cache[3, :1024] = 1.0  # one 4 KiB page written
info = {"malloc": vma(big + big_size // 2), "cache": vma(cache.ctypes.data + cache.nbytes // 2), "active": memory.hugepage_malloc_active(),
        "zero": float(cache[5].sum()), "sum": float(cache.sum())}
print(json.dumps(info))
"""


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return ""
    return text.split("[")[1].split("]")[0] if "[" in text else ""


def test_tunable_is_added_once_and_can_be_refused():
    assert memory.with_hugepage_malloc({})["GLIBC_TUNABLES"] == memory.HUGEPAGE_MALLOC
    twice = memory.with_hugepage_malloc(memory.with_hugepage_malloc({"GLIBC_TUNABLES": "a=1"}))
    assert twice["GLIBC_TUNABLES"] == "a=1:" + memory.HUGEPAGE_MALLOC
    assert (
        memory.with_hugepage_malloc({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})["GLIBC_TUNABLES"]
        == "glibc.malloc.hugetlb=0"
    )  # an explicit choice is not overridden
    assert "GLIBC_TUNABLES" not in memory.with_hugepage_malloc({memory.OPT_OUT: "0"})


def test_lazy_zeros_is_a_zeroed_writable_array():
    a = memory.lazy_zeros((3, 5, 7), np.float16)
    assert a.shape == (3, 5, 7) and a.dtype == np.float16 and a.flags.writeable and a.flags.c_contiguous
    assert not a.any()
    a[1, 2, 3] = 2.5
    assert a.sum() == 2.5
    assert memory.lazy_zeros((0, 4), np.float32).shape == (0, 4)


def _probe(env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_weights_get_huge_pages_and_the_cache_does_not():
    """The real kernel view, in a child that starts with the tunable (as the server's processes do)."""
    info = _probe(memory.with_hugepage_malloc(dict(os.environ)))
    assert info["active"]
    assert info["zero"] == 0.0 and info["sum"] == 1024.0
    # lazily committed: 64 MiB reserved, one page written
    assert int(info["cache"]["Rss"].split()[0]) <= 64
    assert info["cache"].get("THPeligible", "0") == "0" and info["cache"].get("AnonHugePages", "0 kB") == "0 kB"
    if _thp_mode() in ("madvise", "always") and "THPeligible" in info["malloc"]:
        assert info["malloc"]["THPeligible"] == "1"
    if _thp_mode() == "madvise" and "THPeligible" in info["malloc"]:  # without the tunable: small pages
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        assert _probe(env)["malloc"]["THPeligible"] == "0"
