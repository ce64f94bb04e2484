"""The MusicGen-Melody LM loop on ONNX Runtime (numpy + onnxruntime, no torch).

MusicGen-Melody has no cross-attention: the conditioning is PREPENDED to the decoder input, as in
transformers' ``MusicgenMelodyForConditionalGeneration.generate``:

    prefix = [ audio_enc_to_dec_proj(chroma) looped/truncated to chroma_length | projected text states ]
    decoder input = prefix (P = chroma_length + text tokens embeddings) followed by the audio tokens (BOS first)

with positions 0..P-1 for the prefix, P for BOS, and a plain causal mask (no padding mask: one request
never has padded text tokens). Classifier-free guidance adds a null row per request whose prefix is
[ projection of the null chroma (one-hot bin 0, same length — the projection bias is included) |
zeros (text nulled AFTER its projection) ]. Text-only requests use the null chroma in their
conditional row too.

Graphs (exported by export/melody.py, names below):
  melody_condition.onnx   chroma [B,Tc,12] float, encoder_hidden_states [B,T,H] -> inputs_embeds [B,L+T,H]
  melody_decoder_step.onnx inputs_embeds [B,E,H], input_ids [B,K,S], position_ids [B,E+S],
                           attention_mask [B,past+E+S], past_key_values.{i}.decoder.{key,value} [B,h,past,d]
                           -> logits [B,K,S,V] (token positions only), present.{i}.decoder.{key,value}
The step graph takes the prefix embeddings and the BOS ids together (prefill, E = P, empty past) or
token ids alone (E = 0). Per-row positions and masks let sequences at different steps, with prefixes
of different lengths, share one batched decode step: each new sequence is prefilled on its own rows,
then its cache is merged (right-aligned, the columns it does not own masked out) into the batch.

API for a server (e.g. a Triton python model), mirroring ``lm.LanguageModel``:
  lm = MelodyLanguageModel(model_dir)                      # lm_engine/1 of a melody export
  seq = lm.prepare(text_states [T,H], text_mask [T], chroma [Tc,12] | None, params, frames, on_step=None)
  lm.add(seq); while not seq.done: lm.step()               # step() returns the sequences that finished
  codes = seq.codes()                                      # [K, frames] int64
  or: codes = lm.generate(text_states, text_mask, chroma, params, frames)
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import delay, manifest as manifest_mod, names
from .chroma import ChromaConfig, MelodyInputError, null_chroma
from .lm import SequenceState, batch_rows
from .onnx_session import GraphError, open_graph
from .validation import GenerationParams

MODEL_TYPE = "musicgen_melody"
CHROMA = "chroma"  # condition graph input [B, Tc, num_chroma]
INPUTS_EMBEDS = "inputs_embeds"  # condition graph output / step graph input [B, E, H]
CONDITION_FILE = "melody_condition.onnx"
DECODER_STEP_FILE = "melody_decoder_step.onnx"

_ids = itertools.count(1)


def is_melody(manifest: dict) -> bool:
    return manifest.get("model_type") == MODEL_TYPE


@dataclass(eq=False)
class MelodySequence(SequenceState):
    params: GenerationParams  # seed fixed
    frames: int
    steps: int
    tokens: np.ndarray  # [K, steps + 1] delayed sequence, column 0 = BOS
    valid: np.ndarray  # [K, steps + 1] where real tokens go
    prefix: np.ndarray  # [rows, P, H] conditioning embeddings (cond row, then the null row with guidance)
    rng: np.random.Generator
    audio_channels: int = 1
    on_step: Callable[["MelodySequence"], None] | None = None
    t: int = 0  # columns filled after BOS
    id: int = field(default_factory=lambda: next(_ids))
    error: BaseException | None = None
    cancelled: bool = False

    @property
    def prefix_len(self) -> int:
        return int(self.prefix.shape[1])


class MelodyConditioner:
    """melody_condition graph: chroma projected and looped/truncated to chroma_length, then the text states."""

    def __init__(self, graph: str | Path, device: str = "cpu", threads: int | None = None):
        self.sess = open_graph(graph, device, threads, expect_inputs=[CHROMA, names.ENCODER_HIDDEN_STATES],
                               expect_outputs=[INPUTS_EMBEDS])
        self.num_chroma = int(self.sess.get_inputs()[0].shape[-1])

    def __call__(self, chroma: np.ndarray, text_states: np.ndarray) -> np.ndarray:
        """chroma [B, Tc, C], text_states [B, T, H] -> [B, chroma_length + T, H] float32."""
        out = self.sess.run([INPUTS_EMBEDS], {CHROMA: np.asarray(chroma, np.float32),
                                              names.ENCODER_HIDDEN_STATES: np.asarray(text_states, np.float32)})[0]
        return out.astype(np.float32, copy=False)


class MelodyLanguageModel:
    """melody_condition + melody_decoder_step graphs of one MusicGen-Melody export."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", threads: int | None = None):
        model_dir = Path(model_dir)
        self.manifest = manifest_mod.read(model_dir)
        if not is_melody(self.manifest):
            raise GraphError(f"{model_dir}: export of a {self.manifest.get('model_type')!r} checkpoint, "
                             f"not {MODEL_TYPE!r}: use lm.LanguageModel")
        self.dims = manifest_mod.dims(self.manifest)
        mel = self.manifest.get("melody") or {}
        try:
            self.chroma_length = int(mel["chroma_length"])
            self.num_chroma = int(mel["num_chroma"])
            self.position_table = int(mel["position_table"])
        except (KeyError, TypeError, ValueError) as exc:
            raise manifest_mod.ManifestError(f"melody manifest lacks {exc}: re-export") from None
        self.chroma_config = ChromaConfig.from_manifest(self.manifest)
        self.condition = MelodyConditioner(model_dir / CONDITION_FILE, device, threads)
        if self.condition.num_chroma != self.num_chroma:
            raise GraphError(f"{CONDITION_FILE} takes {self.condition.num_chroma} chroma bins, "
                             f"manifest says {self.num_chroma}")
        self.step_sess = open_graph(model_dir / DECODER_STEP_FILE, device, threads,
                                    expect_inputs=[INPUTS_EMBEDS, names.INPUT_IDS, names.POSITION_IDS,
                                                   names.ATTENTION_MASK],
                                    expect_outputs=[names.LOGITS])
        past = [i for i in self.step_sess.get_inputs() if i.name.startswith("past_key_values.")]
        self.num_layers = len(past) // 2
        if self.num_layers != self.dims.num_layers:
            raise GraphError(f"{DECODER_STEP_FILE} has {self.num_layers} layers, manifest says {self.dims.num_layers}")
        self.cache_dtype = np.float16 if past[0].type == "tensor(float16)" else np.float32
        emb = next(i for i in self.step_sess.get_inputs() if i.name == INPUTS_EMBEDS)
        self.embeds_dtype = np.float16 if emb.type == "tensor(float16)" else np.float32
        self._lock = threading.Lock()
        self._reset()

    # -- conditioning ----------------------------------------------------------------------------
    def conditioning(self, text_states: np.ndarray, text_mask: np.ndarray, chroma: np.ndarray | None,
                     guidance_scale: float) -> np.ndarray:
        """[rows, chroma_length + T, H] prefix embeddings for one request (rows = 2 with guidance > 1).

        text_states [T, H] projected text states (text_encoder graph), text_mask [T]: padded positions
        (mask 0) are dropped, as one request alone has none in the reference. chroma [Tc, num_chroma]
        (chroma.chroma(...)), or None for text-only generation.
        """
        d = self.dims
        text_states = np.asarray(text_states, np.float32)
        text_mask = np.asarray(text_mask)
        if text_states.ndim != 2 or text_states.shape[1] != d.hidden_size:
            raise ValueError(f"text states must be [T, {d.hidden_size}], got {text_states.shape}")
        if text_mask.shape != text_states.shape[:1]:
            raise ValueError(f"text mask must be [{text_states.shape[0]}], got {text_mask.shape}")
        text = text_states[text_mask.astype(bool)][None]
        if chroma is None:
            chroma = null_chroma(1, self.num_chroma)
        chroma = np.asarray(chroma, np.float32)
        if chroma.ndim != 2 or chroma.shape[0] < 1 or chroma.shape[1] != self.num_chroma:
            raise MelodyInputError(f"chroma must be [frames >= 1, {self.num_chroma}], got {chroma.shape}")
        if not np.all(np.isfinite(chroma)):
            raise MelodyInputError("chroma contains NaN or infinite values")
        chromas, texts = chroma[None], text
        if guidance_scale > 1.0:  # null condition: null chroma (projected, bias included) + zero text states
            chromas = np.concatenate([chromas, null_chroma(chroma.shape[0], self.num_chroma)[None]])
            texts = np.concatenate([texts, np.zeros_like(texts)])
        return self.condition(chromas, texts)

    def max_frames(self, text_tokens: int) -> int:
        """Most frames one request with `text_tokens` text tokens can generate (position table bound)."""
        room = self.position_table - (self.chroma_length + text_tokens) - 1
        return max(0, room - int(delay.delays(self.dims.num_codebooks, self.dims.audio_channels).max()))

    # -- batch state -----------------------------------------------------------------------------
    def _reset(self):
        d = self.dims
        self.active: list[MelodySequence] = []  # prefilled, in the batch
        self.pending: list[MelodySequence] = []  # waiting for their prefill at the next step
        shape = (0, d.num_heads, 0, d.head_dim)
        self.cache = [np.zeros(shape, self.cache_dtype) for _ in range(2 * self.num_layers)]
        self.row_mask = np.zeros((0, 0), np.int64)

    def prepare(self, text_states, text_mask, chroma, params: GenerationParams, frames: int,
                on_step=None) -> MelodySequence:
        """A sequence for one request; see `conditioning` for the inputs."""
        d = self.dims
        if frames < 1:
            raise ValueError("frames must be >= 1")
        params = params.with_seed()
        prefix = self.conditioning(text_states, text_mask, chroma, params.guidance_scale)
        steps = delay.num_steps(frames, d.num_codebooks, d.audio_channels)
        if prefix.shape[1] + steps + 1 > self.position_table:
            raise ValueError(f"{frames} frames after a {prefix.shape[1]}-position conditioning need "
                             f"{prefix.shape[1] + steps + 1} positions; the model has {self.position_table}")
        tokens = np.full((d.num_codebooks, steps + 1), d.pad_token_id, np.int64)
        return MelodySequence(params=params, frames=frames, steps=steps, tokens=tokens,
                              valid=delay.valid_mask(frames, d.num_codebooks, d.audio_channels),
                              prefix=prefix.astype(self.embeds_dtype, copy=False),
                              rng=np.random.default_rng(params.seed), audio_channels=d.audio_channels,
                              on_step=on_step)

    def add(self, seq: MelodySequence) -> None:
        """Join at the next step (its prefill runs then, on its own rows)."""
        with self._lock:
            self.pending.append(seq)

    def cancel(self, seq: MelodySequence) -> None:
        seq.cancelled = True

    def _feed(self, embeds, ids, pos, mask, cache):
        feed = {INPUTS_EMBEDS: embeds, names.INPUT_IDS: ids, names.POSITION_IDS: pos, names.ATTENTION_MASK: mask}
        for i in range(self.num_layers):
            feed[names.past(i, "decoder", "key")] = cache[2 * i]
            feed[names.past(i, "decoder", "value")] = cache[2 * i + 1]
        return feed

    def step(self) -> list[MelodySequence]:
        """One step for every sequence: a batched decode step for the running ones, the prefill for new ones.

        Returns the sequences that finished (done, failed or cancelled) and left the batch.
        """
        with self._lock:
            d = self.dims
            if self.active:
                rows = self.row_mask.shape[0]
                ids = np.empty((rows, d.num_codebooks, 1), np.int64)
                pos = np.empty((rows, 1), np.int64)
                for seq, r in batch_rows(self.active):
                    ids[r:r + seq.rows, :, 0] = seq.tokens[:, seq.t]
                    pos[r:r + seq.rows] = seq.prefix_len + seq.t
                mask = np.concatenate([self.row_mask, np.ones((rows, 1), np.int64)], axis=1)
                embeds = np.zeros((rows, 0, d.hidden_size), self.embeds_dtype)
                try:
                    out = self.step_sess.run(None, self._feed(embeds, ids, pos, mask, self.cache))
                except Exception as exc:  # a failed batched step fails the sequences in it, clearly
                    err = RuntimeError(f"decoder step failed: {exc}")
                    for seq in self.active:
                        seq.error = err
                else:
                    self.cache, self.row_mask = list(out[1:]), mask
                    for seq, r in batch_rows(self.active):
                        if not seq.cancelled:
                            seq.advance(out[0], r, d.pad_token_id)
            pending, self.pending = self.pending, []
            for seq in pending:
                if seq.cancelled:
                    continue
                self._prefill(seq)
            finished = [s for s in pending if s.done and s not in self.active]
            return finished + self._retire()

    def _prefill(self, seq: MelodySequence) -> None:
        d = self.dims
        rows, plen = seq.rows, seq.prefix_len
        ids = np.repeat(seq.tokens[None, :, :1], rows, axis=0)  # BOS
        pos = np.tile(np.arange(plen + 1, dtype=np.int64), (rows, 1))
        mask = np.ones((rows, plen + 1), np.int64)
        empty = [np.zeros((rows, d.num_heads, 0, d.head_dim), self.cache_dtype) for _ in range(2 * self.num_layers)]
        try:
            out = self.step_sess.run(None, self._feed(seq.prefix, ids, pos, mask, empty))
        except Exception as exc:
            seq.error = RuntimeError(f"prefill failed: {exc}")
            return
        seq.advance(out[0], 0, d.pad_token_id)
        if seq.done:
            return
        # merge: right-align the columns; each side's extra leading columns are masked out
        width, new_w = self.row_mask.shape[1], plen + 1
        total = max(width, new_w)
        pad_old, pad_new = total - width, total - new_w
        caches = []
        for old, new in zip(self.cache, out[1:]):
            if old.shape[0] == 0:
                caches.append(np.pad(new, ((0, 0), (0, 0), (pad_new, 0), (0, 0))))
                continue
            caches.append(np.concatenate([np.pad(old, ((0, 0), (0, 0), (pad_old, 0), (0, 0))),
                                          np.pad(new, ((0, 0), (0, 0), (pad_new, 0), (0, 0)))]))
        self.cache = caches
        self.row_mask = np.concatenate([np.pad(self.row_mask, ((0, 0), (pad_old, 0))),
                                        np.pad(mask, ((0, 0), (pad_new, 0)))])
        self.active.append(seq)

    def _retire(self) -> list[MelodySequence]:
        done = [s for s in self.active if s.done]
        if not done:
            return []
        keep_rows = np.concatenate([np.arange(r, r + s.rows) for s, r in batch_rows(self.active) if not s.done] or
                                   [np.zeros(0, np.int64)]).astype(np.int64)
        self.active = [s for s in self.active if not s.done]
        if not self.active:
            pending = self.pending
            self._reset()
            self.pending = pending
            return done
        self.row_mask = self.row_mask[keep_rows]
        used = np.flatnonzero(self.row_mask.any(axis=0))
        first = int(used[0]) if used.size else self.row_mask.shape[1]
        self.row_mask = self.row_mask[:, first:]
        self.cache = [np.ascontiguousarray(c[keep_rows][:, :, first:]) for c in self.cache]
        return done

    # -- one request, start to end -----------------------------------------------------------------
    def generate(self, text_states, text_mask, chroma, params: GenerationParams, frames: int,
                 on_step=None) -> np.ndarray:
        """codes [K, frames] for one request (runs alongside whatever else is in the batch)."""
        seq = self.prepare(text_states, text_mask, chroma, params, frames, on_step)
        self.add(seq)
        while not seq.done:
            self.step()
        if seq.error is not None:
            raise seq.error
        return seq.codes()
