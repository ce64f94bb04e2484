"""Our own CPU kernels for ONNX Runtime, for the decode steps of one request.

ONNX Runtime's MatMulNBits (8-bit) read a one-request step's weights at about half the memory's
rate on AVX2 CPUs without VNNI (its int8 arithmetic is the bound there); `Int8BlockGemv` (int8_gemv.h)
reads them as three sequential streams side by side per thread and multiplies in int16, from a copy on
2 MB pages made when the session is created (hugepage_copy.h), with the layer norm before it (prologue.h)
or the GELU after it (int8_gemv.h) folded in.
`CachedAttention` (attention.h) reads an int8 self-attention cache (a step reads all of it; in float16 it
would be three quarters of the weights' bytes at the end of a 30 s clip), `CrossAttention` float16 text
keys and values, each head's once and in order. The C sources are built into a shared library by
`python -m musicgen_runtime.cpu_kernels` (`make setup` runs it); `onnx_session.open_graph` registers that
library with every session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

DOMAIN = "ai.musicgen"
OP = "Int8BlockGemv"
ATTENTION_OP = "CachedAttention"  # GroupQueryAttention (packed QKV, in-place cache, no rotary) in our kernel
CROSS_ATTENTION_OP = "CrossAttention"  # MultiHeadAttention over float16 text K/V with a key padding mask
BLOCK = 128  # inputs per weight scale
TILE = 8  # output rows per packed tile (int8_gemv.h TILE_OUTPUTS)
PAIR = 2  # inputs per packed group of a tile
QUANT_BLOCK = 16  # the activations' quantizer works in groups of 16 inputs: a block is a multiple of it
CACHE_SCALE_BYTES = 4  # an int8 cache position: head_dim int8 values, then their float32 scale (attention.h)
PROLOGUE_SKIP_LAYER_NORM = 2  # Int8BlockGemv's `prologue` attribute (prologue.h)
EPILOGUE_GELU = 1  # its `epilogue` attribute (int8_gemv.h)

_HERE = Path(__file__).resolve().parent
SOURCES = (
    _HERE / "int8_gemv.c",
    _HERE / "attention.c",
    _HERE / "prologue.c",
    _HERE / "hugepage_copy.c",
    _HERE / "read_probe.c",
    _HERE / "ort_op.c",
)
HEADERS = (
    _HERE / "int8_gemv.h",
    _HERE / "attention.h",
    _HERE / "prologue.h",
    _HERE / "simd_math.h",
    _HERE / "hugepage_copy.h",
    _HERE / "ort_abi.h",
)
LIBRARY = _HERE / "libmusicgen_cpu_kernels.so"
CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Werror", "-std=c11"]


class KernelBuildError(RuntimeError):
    pass


def built() -> bool:
    """The library exists and is newer than every source and this file (its compiler flags)."""
    if not LIBRARY.exists():
        return False
    stamp = LIBRARY.stat().st_mtime
    return all(not p.exists() or p.stat().st_mtime <= stamp for p in (*SOURCES, *HEADERS, Path(__file__)))


def build(force: bool = False) -> Path:
    """Compile the library (C compiler: $CC, else cc) unless it is current; returns its path."""
    if built() and not force:
        return LIBRARY
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise KernelBuildError(f"no C compiler ({cc!r}) to build {LIBRARY.name}: install gcc, or set CC")
    with tempfile.TemporaryDirectory(dir=_HERE) as tmp:  # built aside, then moved: never half-written
        out = Path(tmp) / LIBRARY.name
        cmd = [cc, *CFLAGS, "-o", str(out), *map(str, SOURCES), "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelBuildError(f"building {LIBRARY.name} failed:\n{done.stderr.strip()}")
        os.replace(out, LIBRARY)
    return LIBRARY


def library() -> Path | None:
    """The built library, or None when it has not been built (or its sources changed since)."""
    return LIBRARY if built() else None


def pack(weight: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """A MatMul's weight [K, N] (fp32) → the operator's (Qp int8 [N8/8, K/2, 16], Sp fp32 [N8/8, K/block, 8]):
    symmetric int8 with one scale per output and `block` inputs, packed in tiles of 8 outputs, each pair of
    inputs the 8 outputs' 2 weights side by side (N8: N rounded up to 8; the padding rows are zeros)."""
    k, n = weight.shape
    if k % block or block % QUANT_BLOCK:
        raise ValueError(f"K {k} must be a multiple of the block {block}, and the block of {QUANT_BLOCK}")
    n8 = -(-n // TILE) * TILE
    w = np.zeros((n8, k), np.float32)
    w[:n] = weight.T
    blocks = w.reshape(n8, k // block, block)
    scale = np.abs(blocks).max(axis=2) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(blocks / scale[:, :, None]), -127, 127).astype(np.int8).reshape(n8, k)
    qp = q.reshape(n8 // TILE, TILE, k // PAIR, PAIR).transpose(0, 2, 1, 3).reshape(n8 // TILE, k // PAIR, TILE * PAIR)
    sp = scale.reshape(n8 // TILE, TILE, k // block).transpose(0, 2, 1).astype(np.float32)
    return np.ascontiguousarray(qp), np.ascontiguousarray(sp)


def unpack(qp: np.ndarray, sp: np.ndarray, n: int) -> np.ndarray:
    """The weight [K, N] that `pack`'s output stands for (dequantized): the operator's reference."""
    tiles, pairs, _ = qp.shape
    k, block = pairs * PAIR, pairs * PAIR // sp.shape[1]
    q = qp.reshape(tiles, pairs, TILE, PAIR).transpose(0, 2, 1, 3).reshape(tiles * TILE, k).astype(np.float32)
    scale = sp.transpose(0, 2, 1).reshape(tiles * TILE, k // block)
    return (q * np.repeat(scale, block, axis=1))[:n].T
