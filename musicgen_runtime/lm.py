"""The MusicGen LM loop on ONNX Runtime: KV cache, classifier-free guidance, delay pattern, sampling.

Sequences share one batched decoder step. Every sequence feeds one token per step (MusicGen's
prefill is the single BOS step), so a new sequence joins a running batch at any step: its rows
get cache columns masked out for the steps before it joined, its own position ids, its own
sampling parameters and random generator. Finished sequences leave and the columns nobody uses
any more are dropped. With one sequence this is the plain greedy/sampling loop.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import delay, manifest as manifest_mod, names, sampling
from .onnx_session import GraphError, open_graph
from .validation import GenerationParams

_ids = itertools.count(1)


class SequenceState:
    """What every sequence type exposes to the scheduler (fields come from the dataclasses below)."""

    @property
    def rows(self) -> int:
        """Batch rows: the conditional row, plus the null row with classifier-free guidance."""
        return 2 if self.params.guidance_scale > 1.0 else 1

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


def batch_rows(seqs):
    """(sequence, its first row) for sequences laid out one after another in a batch."""
    start = 0
    for seq in seqs:
        yield seq, start
        start += seq.rows


@dataclass(eq=False)
class Sequence(SequenceState):
    params: GenerationParams  # seed fixed
    frames: int
    steps: int
    tokens: np.ndarray  # [K, steps + 1] delayed sequence, column 0 = BOS
    valid: np.ndarray  # [K, steps + 1] where real tokens go
    cross: list  # per layer K and V, [rows, H, T, D]
    enc_mask: np.ndarray  # [rows, T]
    rng: np.random.Generator
    on_step: Callable[["Sequence"], None] | None = None
    t: int = 0  # columns filled after BOS
    id: int = field(default_factory=lambda: next(_ids))
    error: BaseException | None = None
    cancelled: bool = False
    audio_channels: int = 1


class LanguageModel:
    """cross_kv + decoder_step graphs of one exported checkpoint.

    The self-attention cache is one preallocated buffer per layer, [rows, heads, capacity, head_dim],
    bound as both input and output of the step (ORT's GroupQueryAttention writes each row's new
    K/V in place at its own position). Rows are repacked only when requests join or leave.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        self._ort = ort
        model_dir = Path(model_dir)
        self.manifest = manifest_mod.read(model_dir)
        self.dims = manifest_mod.dims(self.manifest)
        self.device = device
        d = self.dims
        self.step_sess = open_graph(model_dir / names.DECODER_STEP_FILE, device, threads,
                                    expect_inputs=[names.INPUT_IDS, names.POSITION_IDS, names.SEQLENS_K,
                                                   names.TOTAL_SEQUENCE_LENGTH, names.ENCODER_ATTENTION_MASK],
                                    expect_outputs=[names.LOGITS])
        self.cross_sess = open_graph(model_dir / names.CROSS_KV_FILE, device, threads,
                                     expect_inputs=[names.ENCODER_HIDDEN_STATES])
        # layer count and cache dtype are read back from the graph, not assumed
        past = [i for i in self.step_sess.get_inputs() if i.name.startswith("past_key_values.")]
        self.num_layers = len(past) // 4
        if self.num_layers != d.num_layers:
            raise GraphError(f"decoder_step has {self.num_layers} layers, manifest says {d.num_layers}")
        self.cache_dtype = np.float16 if past[0].type == "tensor(float16)" else np.float32
        if device == "cuda" and self.cache_dtype != np.float16:
            raise GraphError("GPU serving needs the fp16 LM (GroupQueryAttention on CUDA is fp16/bf16 only): "
                             "export with --precision fp16")
        self.hidden_dtype = (np.float16 if self.cross_sess.get_inputs()[0].type == "tensor(float16)"
                             else np.float32)
        self.cross_out = [o.name for o in self.cross_sess.get_outputs()]
        if len(self.cross_out) != 2 * self.num_layers:
            raise GraphError("cross_kv outputs do not match the decoder's layers")
        self._lock = threading.Lock()
        self._reset()

    # -- batch state ---------------------------------------------------------------------------
    def _value(self, arr: np.ndarray):
        """An OrtValue on this model's device (on CPU it shares the numpy buffer)."""
        if self.device == "cuda":
            return self._ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0)
        return self._ort.OrtValue.ortvalue_from_numpy(arr)

    def _host(self, value) -> np.ndarray:
        return value.numpy()

    def _reset(self):
        self.active: list[Sequence] = []
        self.capacity = 0
        self.cache = []  # OrtValues, 2 per layer
        self._host_cache = []  # keeps CPU buffers alive under their OrtValues
        self.cross = None
        self.enc_mask = None

    def _repack(self, keep_rows: np.ndarray, new_rows: int, capacity: int) -> None:
        """Rebuild the cache buffers with rows `keep_rows` of the old ones plus `new_rows` empty rows."""
        host = self._zeros(len(keep_rows) + new_rows, capacity)
        if self.cache and len(keep_rows):
            n = min(capacity, self.capacity)
            for buf, old in zip(host, self.cache):
                buf[:len(keep_rows), :, :n] = self._host(old)[keep_rows, :, :n]
        # filled before wrapping: on a GPU the OrtValue is a device copy of the host array
        self._host_cache, self.cache, self.capacity = host, [self._value(h) for h in host], capacity
        self.cross = None  # rebuilt at the next step

    def prepare(self, hidden: np.ndarray, mask: np.ndarray, params: GenerationParams, frames: int,
                on_step=None) -> Sequence:
        """A sequence for one request. hidden [T, H] projected text states, mask [T]."""
        d = self.dims
        if frames < 1:
            raise ValueError("frames must be >= 1")
        steps = delay.num_steps(frames, d.num_codebooks, d.audio_channels)
        if steps + 1 > d.max_positions:
            raise ValueError(f"{frames} frames need {steps + 1} positions; the model has {d.max_positions}")
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
        """Join the running batch at the next step."""
        with self._lock:
            rows = sum(s.rows for s in self.active)
            capacity = max([self.capacity, seq.steps + 1])
            self._repack(np.arange(rows), seq.rows, capacity)
            self.active.append(seq)

    def _build_cross(self):
        t_max = max(s.enc_mask.shape[1] for s in self.active)
        cross = []
        for j in range(2 * self.num_layers):
            parts = []
            for s in self.active:
                c = s.cross[j]
                if c.shape[2] < t_max:
                    c = np.pad(c, ((0, 0), (0, 0), (0, t_max - c.shape[2]), (0, 0)))
                parts.append(c)
            cross.append(self._value(np.ascontiguousarray(np.concatenate(parts))))
        self.cross = cross
        self.enc_mask = np.concatenate([np.pad(s.enc_mask, ((0, 0), (0, t_max - s.enc_mask.shape[1])))
                                        for s in self.active])

    def step(self) -> list[Sequence]:
        """One batched step for every active sequence; returns the sequences that finished."""
        with self._lock:
            if not self.active:
                return []
            if self.cross is None:
                self._build_cross()
            rows = sum(s.rows for s in self.active)
            d = self.dims
            ids = np.empty((rows, d.num_codebooks, 1), np.int64)
            pos = np.empty((rows, 1), np.int64)
            for seq, r in batch_rows(self.active):
                ids[r:r + seq.rows, :, 0] = seq.tokens[:, seq.t]
                pos[r:r + seq.rows] = seq.t
            try:
                logits = self.run_step(ids, pos, self.enc_mask, self.cache, self.cross)
            except Exception as exc:  # a failed batched step fails the sequences in it, clearly
                err = RuntimeError(f"decoder step failed: {exc}")
                for seq in self.active:
                    seq.error = err
                return self._retire()
            for seq, r in batch_rows(self.active):
                seq.advance(logits, r, d.pad_token_id)
            return self._retire()

    def run_step(self, ids: np.ndarray, pos: np.ndarray, enc_mask: np.ndarray, cache: list, cross: list) -> np.ndarray:
        """Run the step graph: `cache` (OrtValues [rows, H, capacity, D]) is updated in place.

        ids [rows, K, S]; pos [rows, S] positions of the new tokens, which are also their cache indices.
        """
        io = self.step_sess.io_binding()
        io.bind_cpu_input(names.INPUT_IDS, np.ascontiguousarray(ids, np.int64))
        io.bind_cpu_input(names.POSITION_IDS, np.ascontiguousarray(pos, np.int64))
        io.bind_cpu_input(names.SEQLENS_K, np.ascontiguousarray(pos[:, -1], np.int32))
        io.bind_cpu_input(names.TOTAL_SEQUENCE_LENGTH, np.array(int(pos.max()) + 1, np.int32))
        io.bind_cpu_input(names.ENCODER_ATTENTION_MASK, np.ascontiguousarray(enc_mask, np.int64))
        io.bind_output(names.LOGITS, "cpu")  # bound first: get_outputs() follows binding order
        for i in range(self.num_layers):
            for j, kv in ((2 * i, "key"), (2 * i + 1, "value")):
                io.bind_ortvalue_input(names.past(i, "decoder", kv), cache[j])
                io.bind_ortvalue_output(names.present(i, kv), cache[j])  # same buffer: written in place
                io.bind_ortvalue_input(names.past(i, "encoder", kv), cross[j])
        self.step_sess.run_with_iobinding(io)
        return io.get_outputs()[0].numpy()

    def _zeros(self, rows: int, capacity: int) -> list[np.ndarray]:
        d = self.dims
        return [np.zeros((rows, d.num_heads, capacity, d.head_dim), self.cache_dtype)
                for _ in range(2 * self.num_layers)]

    def new_cache(self, rows: int, capacity: int) -> tuple[list, list]:
        """Fresh zeroed cache buffers: (OrtValues, host arrays that must stay alive with them)."""
        host = self._zeros(rows, capacity)
        return [self._value(h) for h in host], host

    def cancel(self, seq: Sequence) -> None:
        seq.cancelled = True

    def _retire(self) -> list[Sequence]:
        done = [s for s in self.active if s.done]
        if not done:
            return []
        keep = [np.arange(r, r + s.rows) for s, r in batch_rows(self.active) if not s.done]
        self.active = [s for s in self.active if not s.done]
        if not self.active:
            self._reset()
            return done
        self._repack(np.concatenate(keep), 0, max(s.steps + 1 for s in self.active))
        return done

    # -- one request, start to end ---------------------------------------------------------------
    def generate(self, hidden, mask, params: GenerationParams, frames: int, on_step=None) -> np.ndarray:
        """codes [K, frames] for one request, running alone."""
        seq = self.prepare(hidden, mask, params, frames, on_step)
        self.add(seq)
        while not seq.done:
            self.step()
        if seq.error is not None:
            raise seq.error
        return seq.codes()
