"""Text-only MusicGen on the LM loop: the text conditions every step through cross-attention.

Graphs (lm_engine/1 of a text-only export, names in names.py): cross_kv (text states -> every
layer's cross-attention K/V, once per request) and decoder_step (+ decoder_step_blockwise_int8 for
int8 exports), which takes the cross K/V and the text mask of every row. MusicGen's prefill is the
single BOS step, so a new generation joins the next batched step directly; one that continues an
audio prompt is first prefilled (BOS + the prompt's columns) on its own rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import names
from .lm import Generation, GenerationRequest, LanguageModel
from .onnx_session import GraphError, open_graph
from .step_graph import StepGraph
from .validation import GenerationParams

MODEL_TYPE = "musicgen"


@dataclass
class CrossCondition:
    cross: list  # per layer K and V, [rows, H, T, D]
    enc_mask: np.ndarray  # [rows, T]


class TextLanguageModel(LanguageModel):
    """cross_kv + decoder_step graphs of one text-only export."""

    model_type = MODEL_TYPE

    def open_graphs(self, model_dir: Path, threads: int | None, blockwise_int8_max_rows: int) -> StepGraph:
        decoder = StepGraph(
            model_dir,
            names.DECODER_STEP_FILE,
            names.DECODER_STEP_BLOCKWISE_INT8_FILE,
            [names.ENCODER_ATTENTION_MASK],
            self.dims,
            past_per_layer=4,
            device=self.device,
            threads=threads,
            blockwise_int8_max_rows=blockwise_int8_max_rows,
        )
        self.cross_sess = open_graph(
            model_dir / names.CROSS_KV_FILE,
            self.device,
            threads,
            expect_inputs=[names.ENCODER_HIDDEN_STATES],
            spin=False,
        )
        self.hidden_dtype = np.float16 if self.cross_sess.get_inputs()[0].type == "tensor(float16)" else np.float32
        self.cross_out = [o.name for o in self.cross_sess.get_outputs()]
        if len(self.cross_out) != 2 * decoder.num_layers:
            raise GraphError("cross_kv outputs do not match the decoder's layers")
        self._batch = (None, None)  # (row layout, decode inputs) rebuilt when the layout changes
        return decoder

    def capacity(self, max_steps: int | None) -> int:
        limit = self.dims.max_positions - 1
        return (limit if max_steps is None else min(max_steps, limit)) + 1

    def cross_kv(self, hidden: np.ndarray) -> list[np.ndarray]:
        """Every layer's cross-attention K and V of text states [rows, T, H], in the step graph's dtype."""
        cross = self.cross_sess.run(self.cross_out, {names.ENCODER_HIDDEN_STATES: hidden.astype(self.hidden_dtype)})
        return [c.astype(self.decoder.cross_dtype, copy=False) for c in cross]

    def condition(self, request: GenerationRequest, params: GenerationParams) -> tuple[CrossCondition, int]:
        if request.chroma is not None:
            raise ValueError("a text-only MusicGen takes no melody")
        hidden = np.asarray(request.text_states, dtype=self.hidden_dtype)[None]
        mask = np.asarray(request.text_mask, dtype=np.int64)[None]
        if params.guidance_scale > 1.0:  # null condition: zero states, all-zero mask (as the reference)
            hidden = np.concatenate([hidden, np.zeros_like(hidden)])
            mask = np.concatenate([mask, np.zeros_like(mask)])
        return CrossCondition(self.cross_kv(hidden), mask), 0

    def decode_inputs(self) -> dict:
        """Cross-attention K/V and mask in row order; gap rows get zeros (fully masked). Kept while the
        rows stay the same (the step's kept binding holds the K/V values)."""
        if self._batch[0] != self.rows.layout:
            placed = [(self.rows.start[g.id], g.condition) for g in self.rows.active]
            self._batch = (self.rows.layout, self._cross_inputs(placed, self.rows.used))
        return self._batch[1]

    def prefill_inputs(self, gen: Generation, rows: slice) -> dict:
        """A prompt's prefill: this generation's cross-attention K/V and mask on `rows` of its own rows."""
        c = gen.condition
        part = CrossCondition([kv[rows] for kv in c.cross], c.enc_mask[rows])
        return self._cross_inputs([(0, part)], part.enc_mask.shape[0])

    def _cross_inputs(self, placed: list[tuple[int, CrossCondition]], rows: int) -> dict:
        """The K/V and mask inputs of `rows` rows, each condition at its first row (others: zeros)."""
        t_max = max(c.enc_mask.shape[1] for _, c in placed)
        d = self.dims
        cross = [
            np.zeros((rows, d.num_heads, t_max, d.head_dim), self.decoder.cross_dtype)
            for _ in range(2 * self.num_layers)
        ]
        enc_mask = np.zeros((rows, t_max), np.int64)
        for r, c in placed:
            n, t = c.enc_mask.shape
            enc_mask[r : r + n, :t] = c.enc_mask
            for buf, kv in zip(cross, c.cross):
                buf[r : r + n, :, :t] = kv
        return {"extra": {names.ENCODER_ATTENTION_MASK: enc_mask}, "cross": [self.decoder.value(c) for c in cross]}

    def run_step(self, ids: np.ndarray, pos: np.ndarray, enc_mask: np.ndarray, cache, cross: list) -> np.ndarray:
        """The step graph on the first len(ids) rows of `cache` (verification): ids [rows, K, S], pos
        [rows, S], enc_mask [rows, T], cross the K/V values (`decoder.value`) of `cross_kv`."""
        return self.decoder.run(
            ids, pos, cache, extra={names.ENCODER_ATTENTION_MASK: np.asarray(enc_mask, np.int64)}, cross=cross
        )
