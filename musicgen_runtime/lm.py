"""The MusicGen LM loop on ONNX Runtime: KV cache, classifier-free guidance, delay pattern, sampling.

Sequences share one batched decoder step. Every sequence feeds one token per step (MusicGen's
prefill is the single BOS step), so a new sequence joins a running batch at any step, in free rows
of the preallocated cache (RowBatch), with its own positions, sampling parameters and random
generator. Finished sequences leave and their rows are reused. With one sequence this is the plain
greedy/sampling loop.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import delay, manifest as manifest_mod, memory, names, sampling
from .onnx_session import GraphError, open_graph
from .validation import GenerationParams

# Up to this many new tokens per step (one request with guidance: 2 rows) an int8 export runs its
# blockwise-int8 step graph: measured faster than dynamic int8 at 1-2 rows, slower from 4 rows on.
FEW_ROWS = 2

_ids = itertools.count(1)


@dataclass(eq=False, kw_only=True)
class SequenceState:
    """One request in an LM loop: its delayed tokens and sampling state (what the scheduler and
    RowBatch use). Subclasses add their conditioning."""

    params: GenerationParams  # seed fixed
    frames: int
    steps: int
    tokens: np.ndarray  # [K, steps + 1] delayed sequence, column 0 = BOS
    valid: np.ndarray  # [K, steps + 1] where real tokens go
    rng: np.random.Generator
    audio_channels: int = 1
    on_step: Callable[["SequenceState"], None] | None = None
    t: int = 0  # columns filled after BOS
    id: int = field(default_factory=lambda: next(_ids))
    error: BaseException | None = None
    cancelled: bool = False

    @property
    def rows(self) -> int:
        """Batch rows: the conditional row, plus the null row with classifier-free guidance."""
        return 2 if self.params.guidance_scale > 1.0 else 1

    @property
    def first_position(self) -> int:
        """Position (and cache index) of the BOS token: 0, or after a prepended conditioning."""
        return 0

    @property
    def done(self) -> bool:
        return self.t >= self.steps or self.error is not None or self.cancelled

    def codes(self, upto_frames: int | None = None) -> np.ndarray:
        """[K, frames] codes (only meaningful for frames whose every codebook is filled)."""
        n = self.frames if upto_frames is None else upto_frames
        return delay.undelay(self.tokens, n, self.audio_channels)

    @property
    def frames_ready(self) -> int:
        """Frames whose tokens are final in every codebook."""
        d = int(delay.delays(self.tokens.shape[0], self.audio_channels).max())
        return int(np.clip(self.t - d, 0, self.frames))

    def advance(self, logits: np.ndarray, row: int, pad_token_id: int) -> None:
        """Sample the next column from this sequence's rows (from `row`) of `logits` [rows, K, S, V]:
        guidance, the request's own sampling and generator, the delay pattern, then `on_step`.
        A failure (e.g. a callback whose client has gone) ends only this sequence."""
        try:
            cond = logits[row, :, -1, :].astype(np.float32)
            uncond = logits[row + 1, :, -1, :].astype(np.float32) if self.rows == 2 else None
            p = self.params
            nxt = sampling.sample(sampling.guide(cond, uncond, p.guidance_scale), p.top_k, p.top_p,
                                  p.temperature, self.rng)
            col = self.t + 1
            self.tokens[:, col] = np.where(self.valid[:, col], nxt, pad_token_id)
            self.t = col
            if self.on_step is not None:
                self.on_step(self)
        except Exception as exc:
            self.error = exc


@dataclass(eq=False, kw_only=True)
class Sequence(SequenceState):
    cross: list  # per layer K and V, [rows, H, T, D]
    enc_mask: np.ndarray  # [rows, T]


class KVCache:
    """Self-attention K/V buffers, one per layer and kind, [max_rows, heads, capacity, head_dim].

    Allocated once. A step binds the first `rows` rows (a contiguous prefix) as both the past input
    and the present output, so GroupQueryAttention writes each row's new K/V in place at its own
    position and reads only positions it wrote itself: rows are never zeroed when a new sequence
    takes them over. On CPU the buffers are zeroed 4 KiB pages that the OS commits only when first
    written (memory.lazy_zeros), so a large capacity costs memory only for the positions generated.
    """

    def __init__(self, ort, device: str, dtype, count: int, max_rows: int, heads: int, capacity: int,
                 head_dim: int):
        self.device, self.dtype = device, np.dtype(dtype)
        if device == "cuda" and self.dtype != np.float16:
            raise GraphError("GPU serving needs the fp16 LM (GroupQueryAttention on CUDA is fp16/bf16 only): "
                             "export with --precision fp16")
        self.max_rows, self.capacity = max_rows, capacity
        self._tail = [heads, capacity, head_dim]
        self.row_bytes = heads * capacity * head_dim * self.dtype.itemsize
        self.nbytes = count * max_rows * self.row_bytes  # all of it on a GPU; on CPU, at most this
        shape = [max_rows, *self._tail]
        if device == "cuda":
            self.host = None
            self.values = [ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtype, "cuda", 0)
                           for _ in range(count)]
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
            h[dst:dst + rows, :, :upto] = h[src:src + rows, :, :upto]


class RowBatch:
    """Active sequences in rows of one preallocated KVCache (the text-only and the melody LM loop).

    Every active sequence holds `rows` consecutive rows. Joining takes the lowest free rows and
    copies nothing. When a sequence leaves, its rows are free; on CPU the sequence at the end of the
    batch moves into the gap (copying only the positions it has written) so the batch stays dense.
    Where rows cannot be moved (GPU buffers, from Python) a gap runs as a padding row, which costs a
    GPU little, until a joining sequence takes it.
    """

    cache: KVCache
    _bound: tuple | None = None  # bound_step's kept binding: (what it binds, (IOBinding, logits buffer))
    # set by the subclass from its manifest and step graphs
    step_sess: object
    few_rows_sess: object | None  # an int8 export's blockwise step graph (FEW_ROWS), if loaded
    few_rows: int
    dims: manifest_mod.Dims
    _ort: object
    device: str
    cache_dtype: type
    num_layers: int

    def step_graph(self, tokens: int):
        """The step session for `tokens` new tokens in all (rows x tokens per row): an int8 export's
        blockwise graph up to `few_rows` of them, else the main one."""
        if self.few_rows_sess is not None and tokens <= self.few_rows:
            return self.few_rows_sess
        return self.step_sess

    def bound_step(self, sess, cache: KVCache, rows: int, tokens: int, first_row: int = 0,
                   cross: list | None = None):
        """An IOBinding of step graph `sess` for `tokens` new tokens per row on rows [first_row, first_row +
        rows) of `cache`: those rows bound as the self-attention past and present, `cross` (cross-attention
        K/V values, if the graph takes them) and the logits into a host buffer of their own. Kept and
        reused while these stay the same, so a step binds only its small inputs (`run_bound`): binding
        every buffer anew and wrapping every output took 1.21 ms of each one-request int8 step on our
        2-core VM (≈5 %), 0.14 ms with the kept binding."""
        what = (sess, cache, rows, tokens, first_row, cross)
        if self._bound is not None and all(a is b or (type(a) is int and a == b)
                                           for a, b in zip(self._bound[0], what)):
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
        """Run a step on its `bound_step` binding with its token inputs — ids [rows, K, S], pos [rows, P]
        (the last is each row's cache index) — and the graph's `extra` inputs (name -> array); a copy of
        the logits (the kept binding's next run overwrites its buffer)."""
        io, logits = bound
        io.bind_cpu_input(names.INPUT_IDS, np.ascontiguousarray(ids, np.int64))
        io.bind_cpu_input(names.POSITION_IDS, np.ascontiguousarray(pos, np.int64))
        io.bind_cpu_input(names.SEQLENS_K, np.ascontiguousarray(pos[:, -1], np.int32))
        io.bind_cpu_input(names.TOTAL_SEQUENCE_LENGTH, np.array(int(pos.max()) + 1, np.int32))
        for name, arr in extra.items():
            io.bind_cpu_input(name, arr)
        sess.run_with_iobinding(io)
        return logits.copy()

    def new_cache(self, rows: int, capacity: int) -> KVCache:
        """A KV cache for this model's step graph (the batch's own, or a scratch one for verification)."""
        d = self.dims
        return KVCache(self._ort, self.device, self.cache_dtype, 2 * self.num_layers, rows, d.num_heads,
                       capacity, d.head_dim)

    def cancel(self, seq) -> None:
        seq.cancelled = True

    def run_together(self, seqs) -> None:
        """Add the sequences and step until every one of them is done (errors stay on each)."""
        for seq in seqs:
            self.add(seq)
        while any(not s.done for s in seqs):
            self.step()

    def finish(self, seq) -> np.ndarray:
        """Run one prepared sequence to its end; its codes [K, frames], or its error raised."""
        self.run_together([seq])
        if seq.error is not None:
            raise seq.error
        return seq.codes()

    def _reset(self):
        self.active: list = []  # in row order
        self.start: dict[int, int] = {}  # sequence id -> its first row
        self._layout_changed()

    def _layout_changed(self) -> None:
        """Hook: rows were taken, freed or moved."""

    @property
    def rows_used(self) -> int:
        """Batch rows of the next step: up to the end of the last sequence (gaps included)."""
        return max((self.start[s.id] + s.rows for s in self.active), default=0)

    def _free_start(self, rows: int, ignore=None) -> int:
        """The lowest row where `rows` free rows begin (the rows of `ignore` count as free)."""
        cursor = 0
        for s in self.active:
            if s is ignore:
                continue
            if self.start[s.id] - cursor >= rows:
                break
            cursor = self.start[s.id] + s.rows
        return cursor

    def _take_rows(self, seq) -> int:
        start = self._free_start(seq.rows)
        if start + seq.rows > self.cache.max_rows:
            raise RuntimeError(f"the batch is full ({self.cache.max_rows} rows)")
        self.start[seq.id] = start
        self.active.append(seq)
        self.active.sort(key=lambda s: self.start[s.id])
        self._layout_changed()
        return start

    def _step_inputs(self, pad_token_id: int, num_codebooks: int):
        """ids [rows, K, 1] and positions [rows, 1] of a decode step; gap rows: padding at position 0."""
        rows = self.rows_used
        ids = np.full((rows, num_codebooks, 1), pad_token_id, np.int64)
        pos = np.zeros((rows, 1), np.int64)
        for seq in self.active:
            r = self.start[seq.id]
            ids[r:r + seq.rows, :, 0] = seq.tokens[:, seq.t]
            pos[r:r + seq.rows] = seq.first_position + seq.t
        return ids, pos

    def _retire(self) -> list:
        done = [s for s in self.active if s.done]
        if not done:
            return []
        for s in done:
            self.start.pop(s.id)
        self.active = [s for s in self.active if not s.done]
        while self.cache.can_move and self.active:  # keep the batch dense: the last sequence fills a gap
            last = self.active[-1]
            dst = self._free_start(last.rows, ignore=last)
            if dst >= self.start[last.id]:
                break
            self.cache.move(self.start[last.id], dst, last.rows, last.first_position + last.t + 1)
            self.start[last.id] = dst
            self.active.sort(key=lambda s: self.start[s.id])
        self._layout_changed()
        return done


def _io_signature(sess) -> list:
    return [(v.name, v.type) for v in sess.get_inputs() + sess.get_outputs()]


def open_few_rows_graph(path: Path, main, device: str, threads: int | None, few_rows: int, **expect):
    """An int8 export's blockwise step graph beside `main` (see FEW_ROWS), or None: not exported, or few_rows 0."""
    if few_rows <= 0 or not path.exists():
        return None
    sess = open_graph(path, device, threads, **expect)
    if _io_signature(sess) != _io_signature(main):
        raise GraphError(f"{path.name} does not take the inputs of the main step graph: re-export")
    return sess


class LanguageModel(RowBatch):
    """cross_kv + decoder_step graphs of one exported checkpoint; sequences batched in a RowBatch."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", threads: int | None = None,
                 max_rows: int = 32, max_steps: int | None = None, few_rows: int = FEW_ROWS):
        import onnxruntime as ort

        self._ort = ort
        model_dir = Path(model_dir)
        self.manifest = manifest_mod.read(model_dir)
        self.dims = manifest_mod.dims(self.manifest)
        self.device = device
        d = self.dims
        step_io = dict(expect_inputs=[names.INPUT_IDS, names.POSITION_IDS, names.SEQLENS_K,
                                      names.TOTAL_SEQUENCE_LENGTH, names.ENCODER_ATTENTION_MASK],
                       expect_outputs=[names.LOGITS])
        self.step_sess = open_graph(model_dir / names.DECODER_STEP_FILE, device, threads, **step_io)
        self.few_rows = few_rows
        self.few_rows_sess = open_few_rows_graph(model_dir / names.DECODER_STEP_FEW_ROWS_FILE, self.step_sess,
                                                 device, threads, few_rows, **step_io)
        self.cross_sess = open_graph(model_dir / names.CROSS_KV_FILE, device, threads,
                                     expect_inputs=[names.ENCODER_HIDDEN_STATES], spin=False)
        # layer count and cache dtype are read back from the graph, not assumed
        past = [i for i in self.step_sess.get_inputs() if i.name.startswith("past_key_values.")]
        self.num_layers = len(past) // 4
        if self.num_layers != d.num_layers:
            raise GraphError(f"decoder_step has {self.num_layers} layers, manifest says {d.num_layers}")
        self.cache_dtype = np.float16 if past[0].type == "tensor(float16)" else np.float32
        self.hidden_dtype = (np.float16 if self.cross_sess.get_inputs()[0].type == "tensor(float16)"
                             else np.float32)
        self.cross_out = [o.name for o in self.cross_sess.get_outputs()]
        if len(self.cross_out) != 2 * self.num_layers:
            raise GraphError("cross_kv outputs do not match the decoder's layers")
        max_steps = d.max_positions - 1 if max_steps is None else min(max_steps, d.max_positions - 1)
        self.cache = self.new_cache(max_rows, max_steps + 1)
        self._lock = threading.Lock()
        self._reset()

    # -- batch state ---------------------------------------------------------------------------
    def _value(self, arr: np.ndarray):
        """An OrtValue on this model's device (on CPU it shares the numpy buffer)."""
        if self.device == "cuda":
            return self._ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0)
        return self._ort.OrtValue.ortvalue_from_numpy(arr)

    def _layout_changed(self) -> None:
        self.cross = None  # rebuilt at the next step
        self.enc_mask = None

    def prepare(self, hidden: np.ndarray, mask: np.ndarray, params: GenerationParams, frames: int,
                on_step=None) -> Sequence:
        """A sequence for one request. hidden [T, H] projected text states, mask [T]."""
        d = self.dims
        if frames < 1:
            raise ValueError("frames must be >= 1")
        steps = delay.num_steps(frames, d.num_codebooks, d.audio_channels)
        if steps + 1 > self.cache.capacity:
            raise ValueError(f"{frames} frames need {steps + 1} positions; this engine holds "
                             f"{self.cache.capacity} per request")
        params = params.with_seed()
        hidden = np.asarray(hidden, dtype=self.hidden_dtype)[None]
        mask = np.asarray(mask, dtype=np.int64)[None]
        if params.guidance_scale > 1.0:  # null condition: zero states, all-zero mask (as the reference)
            hidden = np.concatenate([hidden, np.zeros_like(hidden)])
            mask = np.concatenate([mask, np.zeros_like(mask)])
        cross = self.cross_sess.run(self.cross_out, {names.ENCODER_HIDDEN_STATES: hidden})
        tokens = np.full((d.num_codebooks, steps + 1), d.pad_token_id, np.int64)
        return Sequence(params=params, frames=frames, steps=steps, tokens=tokens,
                        valid=delay.valid_mask(frames, d.num_codebooks, d.audio_channels),
                        cross=[c.astype(self.cache_dtype, copy=False) for c in cross], enc_mask=mask,
                        rng=np.random.default_rng(params.seed), on_step=on_step, audio_channels=d.audio_channels)

    def add(self, seq: Sequence) -> None:
        """Join the running batch at the next step, in the lowest free rows (nothing is copied)."""
        with self._lock:
            self._take_rows(seq)

    def _build_cross(self):
        """Cross-attention K/V and mask in row order; gap rows get zeros (fully masked)."""
        rows = self.rows_used
        t_max = max(s.enc_mask.shape[1] for s in self.active)
        d = self.dims
        cross = [np.zeros((rows, d.num_heads, t_max, d.head_dim), self.cache_dtype)
                 for _ in range(2 * self.num_layers)]
        self.enc_mask = np.zeros((rows, t_max), np.int64)
        for s in self.active:
            r, t = self.start[s.id], s.enc_mask.shape[1]
            self.enc_mask[r:r + s.rows, :t] = s.enc_mask
            for buf, c in zip(cross, s.cross):
                buf[r:r + s.rows, :, :t] = c
        self.cross = [self._value(c) for c in cross]

    def step(self) -> list[Sequence]:
        """One batched step for every active sequence; returns the sequences that finished."""
        with self._lock:
            if not self.active:
                return []
            if self.cross is None:
                self._build_cross()
            d = self.dims
            ids, pos = self._step_inputs(d.pad_token_id, d.num_codebooks)
            try:
                logits = self.run_step(ids, pos, self.enc_mask, self.cache, self.cross)
            except Exception as exc:  # a failed batched step fails the sequences in it, clearly
                err = RuntimeError(f"decoder step failed: {exc}")
                for seq in self.active:
                    seq.error = err
                return self._retire()
            for seq in self.active:
                seq.advance(logits, self.start[seq.id], d.pad_token_id)
            return self._retire()

    def run_step(self, ids: np.ndarray, pos: np.ndarray, enc_mask: np.ndarray, cache: KVCache,
                 cross: list) -> np.ndarray:
        """Run the step graph on the first len(ids) rows of `cache`, which is updated in place.

        ids [rows, K, S]; pos [rows, S] positions of the new tokens, which are also their cache indices.
        """
        rows = ids.shape[0]
        sess = self.step_graph(rows * ids.shape[2])
        bound = self.bound_step(sess, cache, rows, ids.shape[2], cross=cross)
        return self.run_bound(sess, bound, ids, pos,
                              {names.ENCODER_ATTENTION_MASK: np.ascontiguousarray(enc_mask, np.int64)})

    # -- one request, start to end ---------------------------------------------------------------
    def generate(self, hidden, mask, params: GenerationParams, frames: int, on_step=None) -> np.ndarray:
        """codes [K, frames] for one request (runs alongside whatever else is in the batch)."""
        return self.finish(self.prepare(hidden, mask, params, frames, on_step))
