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


@dataclass(eq=False)
class Sequence:
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

    @property
    def rows(self) -> int:
        return 2 if self.params.guidance_scale > 1.0 else 1

    @property
    def done(self) -> bool:
        return self.t >= self.steps or self.error is not None or self.cancelled

    def codes(self, upto_frames: int | None = None) -> np.ndarray:
        """[K, frames] codes (only meaningful for frames whose every codebook is filled)."""
        n = self.frames if upto_frames is None else upto_frames
        return delay.undelay(self.tokens, n)

    @property
    def frames_ready(self) -> int:
        """Frames whose tokens are final in every codebook."""
        return int(np.clip(self.t - int(delay.delays(self.tokens.shape[0]).max()), 0, self.frames))


class LanguageModel:
    """cross_kv + decoder_step graphs of one exported checkpoint."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", threads: int | None = None):
        model_dir = Path(model_dir)
        self.manifest = manifest_mod.read(model_dir)
        self.dims = manifest_mod.dims(self.manifest)
        d = self.dims
        self.step_sess = open_graph(model_dir / names.DECODER_STEP_FILE, device, threads,
                                    expect_inputs=[names.INPUT_IDS, names.POSITION_IDS, names.ATTENTION_MASK,
                                                   names.ENCODER_ATTENTION_MASK],
                                    expect_outputs=[names.LOGITS])
        self.cross_sess = open_graph(model_dir / names.CROSS_KV_FILE, device, threads,
                                     expect_inputs=[names.ENCODER_HIDDEN_STATES])
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
        self._lock = threading.Lock()
        self._reset()

    # -- batch state ---------------------------------------------------------------------------
    def _reset(self):
        d = self.dims
        self.active: list[Sequence] = []
        shape = (0, d.num_heads, 0, d.head_dim)
        self.cache = [np.zeros(shape, self.cache_dtype) for _ in range(2 * self.num_layers)]
        self.row_mask = np.zeros((0, 0), np.int64)
        self.cross = None
        self.enc_mask = None

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
                        rng=np.random.default_rng(params.seed), on_step=on_step)

    def add(self, seq: Sequence) -> None:
        """Join the running batch at the next step."""
        with self._lock:
            n, length = seq.rows, self.row_mask.shape[1]
            d = self.dims
            pad = np.zeros((n, d.num_heads, length, d.head_dim), self.cache_dtype)
            self.cache = [np.concatenate([c, pad]) for c in self.cache]
            self.row_mask = np.concatenate([self.row_mask, np.zeros((n, length), np.int64)])
            self.active.append(seq)
            self.cross = None  # rebuilt at the next step

    def _rows(self):
        start = 0
        for seq in self.active:
            yield seq, start
            start += seq.rows

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
            cross.append(np.concatenate(parts))
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
            rows = self.row_mask.shape[0]
            d = self.dims
            ids = np.empty((rows, d.num_codebooks, 1), np.int64)
            pos = np.empty((rows, 1), np.int64)
            for seq, r in self._rows():
                ids[r:r + seq.rows, :, 0] = seq.tokens[:, seq.t]
                pos[r:r + seq.rows] = seq.t
            mask = np.concatenate([self.row_mask, np.ones((rows, 1), np.int64)], axis=1)
            feed = {names.INPUT_IDS: ids, names.POSITION_IDS: pos, names.ATTENTION_MASK: mask,
                    names.ENCODER_ATTENTION_MASK: self.enc_mask}
            for i in range(self.num_layers):
                feed[names.past(i, "decoder", "key")] = self.cache[2 * i]
                feed[names.past(i, "decoder", "value")] = self.cache[2 * i + 1]
                feed[names.past(i, "encoder", "key")] = self.cross[2 * i]
                feed[names.past(i, "encoder", "value")] = self.cross[2 * i + 1]
            try:
                out = self.step_sess.run(None, feed)
            except Exception as exc:  # a failed batched step fails the sequences in it, clearly
                err = RuntimeError(f"decoder step failed: {exc}")
                for seq in self.active:
                    seq.error = err
                return self._retire()
            logits = out[0]
            self.cache = out[1:]
            self.row_mask = mask
            for seq, r in self._rows():
                try:
                    cond = logits[r, :, -1, :].astype(np.float32)
                    uncond = logits[r + 1, :, -1, :].astype(np.float32) if seq.rows == 2 else None
                    p = seq.params
                    nxt = sampling.sample(sampling.guide(cond, uncond, p.guidance_scale),
                                          p.top_k, p.top_p, p.temperature, seq.rng)
                    col = seq.t + 1
                    seq.tokens[:, col] = np.where(seq.valid[:, col], nxt, d.pad_token_id)
                    seq.t = col
                    if seq.on_step is not None:
                        seq.on_step(seq)
                except Exception as exc:  # a failing callback (e.g. client gone) ends only its own sequence
                    seq.error = exc
            return self._retire()

    def cancel(self, seq: Sequence) -> None:
        seq.cancelled = True

    def _retire(self) -> list[Sequence]:
        done = [s for s in self.active if s.done]
        if not done:
            return []
        keep_rows = np.concatenate([np.arange(r, r + s.rows) for s, r in self._rows() if not s.done] or
                                   [np.zeros(0, np.int64)]).astype(np.int64)
        self.active = [s for s in self.active if not s.done]
        if not self.active:
            self._reset()
            return done
        self.row_mask = self.row_mask[keep_rows]
        used = np.flatnonzero(self.row_mask.any(axis=0))
        first = int(used[0]) if used.size else self.row_mask.shape[1]
        self.row_mask = self.row_mask[:, first:]
        self.cache = [np.ascontiguousarray(c[keep_rows][:, :, first:]) for c in self.cache]
        self.cross = None
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
