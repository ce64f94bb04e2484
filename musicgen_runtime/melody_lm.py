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
  melody_decoder_step.onnx inputs_embeds [B,E,H], input_ids [B,K,S], position_ids [B,E+S], seqlens_k [B],
                           total_sequence_length [], past_key_values.{i}.decoder.{key,value} [B,h,capacity,d]
                           -> logits [B,K,S,V] (token positions only), present.* (the same buffers: in place)
The step graph takes the prefix embeddings and the BOS ids together (prefill, E = P, on a new
sequence's own cache rows) or token ids alone (E = 0, every running row at its own position).
Sequences at different steps, with prefixes of different lengths, share one batched decode step.

API for a server (e.g. a Triton python model), mirroring ``lm.LanguageModel``:
  lm = MelodyLanguageModel(model_dir)                      # lm_engine/1 of a melody export
  seq = lm.prepare(text_states [T,H], text_mask [T], chroma [Tc,12] | None, params, frames, on_step=None)
  lm.add(seq); while not seq.done: lm.step()               # step() returns the sequences that finished
  codes = seq.codes()                                      # [K, frames] int64
  or: codes = lm.generate(text_states, text_mask, chroma, params, frames)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import delay, manifest as manifest_mod, names
from .chroma import ChromaConfig, MelodyInputError, null_chroma
from .lm import FEW_ROWS, KVCache, RowBatch, SequenceState, open_few_rows_graph
from .onnx_session import GraphError, open_graph
from .validation import GenerationParams

MODEL_TYPE = "musicgen_melody"
CHROMA = "chroma"  # condition graph input [B, Tc, num_chroma]
INPUTS_EMBEDS = "inputs_embeds"  # condition graph output / step graph input [B, E, H]
CONDITION_FILE = "melody_condition.onnx"
DECODER_STEP_FILE = "melody_decoder_step.onnx"
DECODER_STEP_FEW_ROWS_FILE = "melody_decoder_step_few_rows.onnx"  # int8 exports (lm.FEW_ROWS)


def is_melody(manifest: dict) -> bool:
    return manifest.get("model_type") == MODEL_TYPE


@dataclass(eq=False, kw_only=True)
class MelodySequence(SequenceState):
    prefix: np.ndarray  # [rows, P, H] conditioning embeddings (cond row, then the null row with guidance)

    @property
    def prefix_len(self) -> int:
        return int(self.prefix.shape[1])

    @property
    def first_position(self) -> int:
        return self.prefix_len


class MelodyConditioner:
    """melody_condition graph: chroma projected and looped/truncated to chroma_length, then the text states."""

    def __init__(self, graph: str | Path, device: str = "cpu", threads: int | None = None):
        self.sess = open_graph(graph, device, threads, expect_inputs=[CHROMA, names.ENCODER_HIDDEN_STATES],
                               expect_outputs=[INPUTS_EMBEDS], spin=False)
        self.num_chroma = int(self.sess.get_inputs()[0].shape[-1])

    def __call__(self, chroma: np.ndarray, text_states: np.ndarray) -> np.ndarray:
        """chroma [B, Tc, C], text_states [B, T, H] -> [B, chroma_length + T, H] float32."""
        out = self.sess.run([INPUTS_EMBEDS], {CHROMA: np.asarray(chroma, np.float32),
                                              names.ENCODER_HIDDEN_STATES: np.asarray(text_states, np.float32)})[0]
        return out.astype(np.float32, copy=False)


class MelodyLanguageModel(RowBatch):
    """melody_condition + melody_decoder_step graphs of one MusicGen-Melody export; sequences batched
    in a RowBatch (in-place KV cache, as lm.LanguageModel). A new sequence's prefill (prefix + BOS)
    runs on its own rows at the next step, then it decodes with the others."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", threads: int | None = None,
                 max_rows: int = 32, max_steps: int | None = None, few_rows: int = FEW_ROWS):
        import onnxruntime as ort

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
        step_io = dict(expect_inputs=[INPUTS_EMBEDS, names.INPUT_IDS, names.POSITION_IDS, names.SEQLENS_K,
                                      names.TOTAL_SEQUENCE_LENGTH], expect_outputs=[names.LOGITS])
        self.step_sess = open_graph(model_dir / DECODER_STEP_FILE, device, threads, **step_io)
        self.few_rows = few_rows
        self.few_rows_sess = open_few_rows_graph(model_dir / DECODER_STEP_FEW_ROWS_FILE, self.step_sess, device,
                                                 threads, few_rows, **step_io)
        past = [i for i in self.step_sess.get_inputs() if i.name.startswith("past_key_values.")]
        self.num_layers = len(past) // 2
        if self.num_layers != self.dims.num_layers:
            raise GraphError(f"{DECODER_STEP_FILE} has {self.num_layers} layers, manifest says {self.dims.num_layers}")
        self.cache_dtype = np.float16 if past[0].type == "tensor(float16)" else np.float32
        emb = next(i for i in self.step_sess.get_inputs() if i.name == INPUTS_EMBEDS)
        self.embeds_dtype = np.float16 if emb.type == "tensor(float16)" else np.float32
        self._ort, self.device = ort, device
        capacity = self.position_table  # conditioning + tokens of the longest request
        if max_steps is not None:
            capacity = min(capacity, self.chroma_length + self.dims.max_text_tokens + max_steps + 1)
        self.cache = self.new_cache(max_rows, capacity)
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
        super()._reset()
        self.pending: list[MelodySequence] = []  # waiting for their prefill at the next step

    def prepare(self, text_states, text_mask, chroma, params: GenerationParams, frames: int,
                on_step=None) -> MelodySequence:
        """A sequence for one request; see `conditioning` for the inputs."""
        d = self.dims
        if frames < 1:
            raise ValueError("frames must be >= 1")
        params = params.with_seed()
        prefix = self.conditioning(text_states, text_mask, chroma, params.guidance_scale)
        steps = delay.num_steps(frames, d.num_codebooks, d.audio_channels)
        room = min(self.position_table, self.cache.capacity)
        if prefix.shape[1] + steps + 1 > room:
            raise ValueError(f"{frames} frames after a {prefix.shape[1]}-position conditioning need "
                             f"{prefix.shape[1] + steps + 1} positions; this engine holds {room}")
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

    def run_step(self, embeds: np.ndarray, ids: np.ndarray, pos: np.ndarray, cache: KVCache,
                 first_row: int = 0) -> np.ndarray:
        """The step graph on rows [first_row, first_row + len(ids)) of `cache`, updated in place.

        embeds [rows, E, H] (E = 0 when decoding) · ids [rows, K, S] · pos [rows, E + S] positions of
        the new entries, which are also their cache indices → logits [rows, K, S, V].
        """
        sess = self.step_graph(ids.shape[0] * pos.shape[1])
        bound = self.bound_step(sess, cache, ids.shape[0], ids.shape[2], first_row)
        return self.run_bound(sess, bound, ids, pos,
                              {INPUTS_EMBEDS: np.ascontiguousarray(embeds, self.embeds_dtype)})

    def step(self) -> list[MelodySequence]:
        """One step for every sequence: a batched decode step for the running ones, the prefill for new ones.

        Returns the sequences that finished (done, failed or cancelled) and left the batch.
        """
        with self._lock:
            d = self.dims
            if self.active:
                ids, pos = self._step_inputs(d.pad_token_id, d.num_codebooks)
                embeds = np.zeros((ids.shape[0], 0, d.hidden_size), self.embeds_dtype)
                try:
                    logits = self.run_step(embeds, ids, pos, self.cache)
                except Exception as exc:  # a failed batched step fails the sequences in it, clearly
                    err = RuntimeError(f"decoder step failed: {exc}")
                    for seq in self.active:
                        seq.error = err
                else:
                    for seq in self.active:
                        if not seq.cancelled:
                            seq.advance(logits, self.start[seq.id], d.pad_token_id)
            pending, self.pending = self.pending, []
            not_joined = []
            for seq in pending:
                if seq.cancelled:
                    not_joined.append(seq)
                    continue
                try:
                    start = self._take_rows(seq)
                except RuntimeError as exc:  # no room: this request alone fails
                    seq.error = exc
                    not_joined.append(seq)
                    continue
                self._prefill(seq, start)
            return not_joined + self._retire()

    def _prefill(self, seq: MelodySequence, start: int) -> None:
        """Conditioning + BOS on the sequence's own rows (an empty cache there), then its first token."""
        d = self.dims
        rows, plen = seq.rows, seq.prefix_len
        ids = np.repeat(seq.tokens[None, :, :1], rows, axis=0)  # BOS
        pos = np.tile(np.arange(plen + 1, dtype=np.int64), (rows, 1))
        try:
            logits = self.run_step(seq.prefix, ids, pos, self.cache, first_row=start)
        except Exception as exc:
            seq.error = RuntimeError(f"prefill failed: {exc}")
            return
        seq.advance(logits, 0, d.pad_token_id)

    # -- one request, start to end -----------------------------------------------------------------
    def generate(self, text_states, text_mask, chroma, params: GenerationParams, frames: int,
                 on_step=None) -> np.ndarray:
        """codes [K, frames] for one request (runs alongside whatever else is in the batch)."""
        return self.finish(self.prepare(text_states, text_mask, chroma, params, frames, on_step))
