"""The LM's preallocated self-attention cache and the allocator of its rows among running generations."""

from __future__ import annotations

import numpy as np

from . import memory
from .onnx_session import GraphError


class KVCache:
    """Self-attention K/V buffers, one per layer and kind, [max_rows, heads, capacity, width]: a position is
    `width` elements (head_dim, or for an int8 cache head_dim values and their 4-byte scale).

    Allocated once. A step binds a contiguous run of rows as both the past input and the present
    output, so GroupQueryAttention writes each row's new K/V in place at its own position and reads
    only positions it wrote itself: rows are never zeroed when a new generation takes them over. On
    CPU the buffers are zeroed 4 KiB pages that the OS commits only when first written
    (memory.lazy_zeros), so a large capacity costs memory only for the positions generated.
    """

    def __init__(self, ort, device: str, dtype, count: int, max_rows: int, heads: int, capacity: int, width: int):
        self.device, self.dtype = device, np.dtype(dtype)
        if device == "cuda" and self.dtype != np.float16:
            raise GraphError(
                "GPU serving needs the fp16 LM (GroupQueryAttention on CUDA is fp16/bf16 only): "
                "export with --precision fp16"
            )
        self.max_rows, self.capacity = max_rows, capacity
        self._tail = [heads, capacity, width]
        self.position_bytes = heads * width * self.dtype.itemsize  # of one row at one position, every head
        self.row_bytes = capacity * self.position_bytes
        self.nbytes = count * max_rows * self.row_bytes  # all of it on a GPU; on CPU, at most this
        shape = [max_rows, *self._tail]
        if device == "cuda":
            self.host = None
            self.values = [
                ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtype, "cuda", 0) for _ in range(count)
            ]
        else:
            self.host = [memory.lazy_zeros(shape, self.dtype) for _ in range(count)]
            self.values = [ort.OrtValue.ortvalue_from_numpy(h) for h in self.host]
        self.can_move = self.host is not None  # rows are moved with numpy; device buffers are not

    def bind(self, io, j: int, past: str, present: str, rows: int, first_row: int = 0) -> None:
        """Rows [first_row, first_row + rows) of buffer j as input `past` and output `present` (the
        same memory: rows are contiguous in the buffer)."""
        if first_row < 0 or first_row + rows > self.max_rows:
            raise ValueError(f"rows {first_row}..{first_row + rows - 1} are outside the {self.max_rows}-row cache")
        ptr, shape = self.values[j].data_ptr() + first_row * self.row_bytes, [rows, *self._tail]
        io.bind_input(past, self.device, 0, self.dtype, shape, ptr)
        io.bind_output(present, self.device, 0, self.dtype, shape, ptr)

    def move(self, src: int, dst: int, rows: int, upto: int) -> None:
        """Copy positions [0, upto) of rows [src, src + rows) to rows starting at dst (CPU only)."""
        for h in self.host:
            h[dst : dst + rows, :, :upto] = h[src : src + rows, :, :upto]


class RowAllocator:
    """Which running generation holds which rows of one KVCache.

    Every seated generation holds `gen.rows` consecutive rows. Seating takes the lowest free rows and
    copies nothing. When a generation leaves, its rows are free; on CPU the generation at the end of
    the batch moves into the gap (copying only the positions it has written) so the batch stays
    dense. Where rows cannot be moved (GPU buffers, from Python) a gap runs as a padding row, which
    costs a GPU little, until a joining generation takes it. `layout` changes whenever rows are
    taken, freed or moved (what depends on the row order is rebuilt then).
    """

    def __init__(self, cache: KVCache):
        self.cache = cache
        self.layout = 0
        self.clear()

    def clear(self) -> None:
        self.active: list = []  # in row order
        self.start: dict[int, int] = {}  # generation id -> its first row
        self.layout += 1

    @property
    def used(self) -> int:
        """Batch rows of the next step: up to the end of the last generation (gaps included)."""
        return max((self.start[g.id] + g.rows for g in self.active), default=0)

    def _free_start(self, rows: int, ignore=None) -> int:
        """The lowest row where `rows` free rows begin (the rows of `ignore` count as free)."""
        cursor = 0
        for g in self.active:
            if g is ignore:
                continue
            if self.start[g.id] - cursor >= rows:
                break
            cursor = self.start[g.id] + g.rows
        return cursor

    def take(self, gen) -> int:
        """Seat `gen` in the lowest free rows; its first row. RuntimeError when the cache is full."""
        start = self._free_start(gen.rows)
        if start + gen.rows > self.cache.max_rows:
            raise RuntimeError(f"the batch is full ({self.cache.max_rows} rows)")
        self.start[gen.id] = start
        self.active.append(gen)
        self.active.sort(key=lambda g: self.start[g.id])
        self.layout += 1
        return start

    def release_done(self) -> list:
        """Free the rows of the generations that are done (and keep the batch dense on CPU); those generations."""
        done = [g for g in self.active if g.done]
        if not done:
            return []
        for g in done:
            self.start.pop(g.id)
        self.active = [g for g in self.active if not g.done]
        while self.cache.can_move and self.active:  # the last generation fills a gap
            last = self.active[-1]
            dst = self._free_start(last.rows, ignore=last)
            if dst >= self.start[last.id]:
                break
            self.cache.move(self.start[last.id], dst, last.rows, last.positions_written)
            self.start[last.id] = dst
            self.active.sort(key=lambda g: self.start[g.id])
        self.layout += 1
        return done
