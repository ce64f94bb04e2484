"""A decoder-step graph family: the step graph of an export and, for int8 exports, its blockwise-int8 copy.

Both take the same inputs: token ids [rows, K, S], positions (the last of each row is its cache
index), the in-place self-attention cache, and the family's conditioning inputs (cross-attention
K/V and mask for text-only MusicGen, prefix embeddings for MusicGen-Melody).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import cpu_kernels, names
from .kv_cache import KVCache
from .onnx_session import GraphError, open_graph

# Steps with up to this many new tokens in all (8 requests with guidance: 16 rows; a prefill chunk of one row)
# run an int8 export's blockwise-int8 step graph: on AVX2 without VNNI (AMD Zen 2) faster than dynamic int8 at
# every batch measured, 2 to 16 rows, with logits 2.8x closer to fp32, and each row's result independent of
# the others in its batch (docs/performance.md).
BLOCKWISE_INT8_MAX_ROWS = 16
_CACHE_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8}


def _io_signature(sess) -> list:
    return [(v.name, v.type) for v in sess.get_inputs() + sess.get_outputs()]


class StepGraph:
    """Runs one step of `S` new tokens per row on a run of rows of a KVCache, updated in place.

    `past_per_layer`: past_key_values inputs per layer (4 with cross-attention K/V, 2 without). The
    layer count and cache dtype are read back from the graph, not assumed.
    """

    def __init__(
        self,
        model_dir: Path,
        step_file: str,
        blockwise_int8_file: str,
        inputs: list[str],
        dims,
        past_per_layer: int,
        device: str = "cpu",
        threads: int | None = None,
        blockwise_int8_max_rows: int = BLOCKWISE_INT8_MAX_ROWS,
    ):
        import onnxruntime as ort

        self._ort, self.device, self.dims = ort, device, dims
        expect = dict(
            expect_inputs=[names.INPUT_IDS, names.POSITION_IDS, names.SEQLENS_K, names.TOTAL_SEQUENCE_LENGTH, *inputs],
            expect_outputs=[names.LOGITS],
        )
        self.sess = open_graph(Path(model_dir) / step_file, device, threads, **expect)
        self.blockwise_int8_max_rows = blockwise_int8_max_rows
        self.blockwise_int8_sess = None  # loaded when exported (int8) and not switched off (max rows 0)
        path = Path(model_dir) / blockwise_int8_file
        if blockwise_int8_max_rows > 0 and path.exists():
            self.blockwise_int8_sess = open_graph(path, device, threads, **expect)
            if _io_signature(self.blockwise_int8_sess) != _io_signature(self.sess):
                raise GraphError(f"{path.name} does not take the inputs of {step_file}: re-export")
        past = [i for i in self.sess.get_inputs() if i.name.startswith("past_key_values.")]
        self.num_layers = len(past) // past_per_layer
        if self.num_layers != dims.num_layers:
            raise GraphError(f"{step_file} has {self.num_layers} layers, manifest says {dims.num_layers}")
        # the self-attention cache's format: float, float16, or int8 positions of head_dim values and their
        # float32 scale (our CachedAttention in int8 exports: the last dimension is head_dim + 4)
        self_past = next(i for i in past if ".decoder." in i.name)
        self.cache_dtype = _CACHE_TYPES[self_past.type]
        width = self_past.shape[3]
        self.cache_width = width if isinstance(width, int) else dims.head_dim
        if self.cache_width != dims.head_dim + (cpu_kernels.CACHE_SCALE_BYTES if self.cache_dtype == np.int8 else 0):
            raise GraphError(
                f"{step_file}: a cache position of {width} {self_past.type} does not fit head_dim {dims.head_dim}"
            )
        # cross-attention K/V inputs (text-only MusicGen): float16 in fp16 and int8 exports (int8: our
        # CrossAttention reads halves), float in fp32 ones
        cross = [i for i in past if ".encoder." in i.name]
        self.cross_dtype = np.float16 if cross and cross[0].type == "tensor(float16)" else np.float32
        # float inputs take the graph's dtype (fp16 exports); integer inputs keep the caller's
        self.input_dtype = {
            i.name: np.float16 if i.type == "tensor(float16)" else np.float32
            for i in self.sess.get_inputs()
            if i.type in ("tensor(float)", "tensor(float16)")
        }
        self._bound: tuple | None = None  # the kept binding: (what it binds, (IOBinding, logits buffer))

    def select(self, tokens: int):
        """The session for `tokens` new tokens in all (rows x tokens per row): the blockwise-int8 graph
        up to `blockwise_int8_max_rows` of them, else the main one."""
        if self.blockwise_int8_sess is not None and tokens <= self.blockwise_int8_max_rows:
            return self.blockwise_int8_sess
        return self.sess

    def new_cache(self, rows: int, capacity: int) -> KVCache:
        """A KV cache for this graph (the engine's own, or a scratch one for verification)."""
        d = self.dims
        return KVCache(
            self._ort, self.device, self.cache_dtype, 2 * self.num_layers, rows, d.num_heads, capacity, self.cache_width
        )

    def value(self, arr: np.ndarray):
        """An OrtValue on this graph's device (on CPU it shares the numpy buffer)."""
        if self.device == "cuda":
            return self._ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0)
        return self._ort.OrtValue.ortvalue_from_numpy(arr)

    def bind(self, sess, cache: KVCache, rows: int, tokens: int, first_row: int = 0, cross: list | None = None):
        """An IOBinding of `sess` for `tokens` new tokens per row on rows [first_row, first_row + rows) of
        `cache`: those rows bound as the self-attention past and present, `cross` (cross-attention K/V
        values, if the graph takes them) and the logits into a host buffer of their own. Kept and reused
        while these stay the same, so a step binds only its small inputs (`run_bound`): binding every
        buffer anew and wrapping every output took 1.21 ms of each one-request int8 step on our 2-core
        VM (≈5 %), 0.14 ms with the kept binding."""
        what = (sess, cache, rows, tokens, first_row, cross)
        if self._bound is not None and all(a is b or (type(a) is int and a == b) for a, b in zip(self._bound[0], what)):
            return self._bound[1]
        io = sess.io_binding()
        out = next(o for o in sess.get_outputs() if o.name == names.LOGITS)
        dtype = np.float16 if out.type == "tensor(float16)" else np.float32
        logits = np.empty((rows, self.dims.num_codebooks, tokens, self.dims.vocab_size), dtype)
        io.bind_output(names.LOGITS, "cpu", 0, dtype, list(logits.shape), logits.ctypes.data)
        for i in range(self.num_layers):
            for j, kv in ((2 * i, "key"), (2 * i + 1, "value")):
                cache.bind(io, j, names.past(i, "decoder", kv), names.present(i, kv), rows, first_row)
                if cross is not None:
                    io.bind_ortvalue_input(names.past(i, "encoder", kv), cross[j])
        self._bound = (what, (io, logits))
        return self._bound[1]

    def run_bound(self, sess, bound, ids: np.ndarray, pos: np.ndarray, extra: dict) -> np.ndarray:
        """Run a step on its `bind` binding with its token inputs — ids [rows, K, S], pos [rows, P] (the
        last is each row's cache index) — and the graph's `extra` inputs (name -> array); a copy of the
        logits (the kept binding's next run overwrites its buffer)."""
        io, logits = bound
        io.bind_cpu_input(names.INPUT_IDS, np.ascontiguousarray(ids, np.int64))
        io.bind_cpu_input(names.POSITION_IDS, np.ascontiguousarray(pos, np.int64))
        io.bind_cpu_input(names.SEQLENS_K, np.ascontiguousarray(pos[:, -1], np.int32))
        io.bind_cpu_input(names.TOTAL_SEQUENCE_LENGTH, np.array(int(pos.max()) + 1, np.int32))
        for name, arr in extra.items():
            io.bind_cpu_input(name, np.ascontiguousarray(arr, self.input_dtype.get(name)))
        sess.run_with_iobinding(io)
        return logits.copy()

    def run(
        self,
        ids: np.ndarray,
        pos: np.ndarray,
        cache: KVCache,
        first_row: int = 0,
        extra: dict | None = None,
        cross: list | None = None,
    ) -> np.ndarray:
        """One step on rows [first_row, first_row + len(ids)) of `cache`: ids [rows, K, S], pos [rows, P]
        positions of the P new cache entries (P = S, or prefix + S) → logits [rows, K, S, V]."""
        rows = ids.shape[0]
        sess = self.select(rows * pos.shape[1])
        bound = self.bind(sess, cache, rows, ids.shape[2], first_row, cross)
        return self.run_bound(sess, bound, ids, pos, extra or {})
