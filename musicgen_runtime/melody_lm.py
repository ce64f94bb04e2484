"""MusicGen-Melody on the LM loop (lm.py): the conditioning is a prefix (numpy + onnxruntime, no torch).

MusicGen-Melody has no cross-attention: the conditioning is PREPENDED to the decoder input, as in
transformers' ``MusicgenMelodyForConditionalGeneration.generate``:

    prefix = [ audio_enc_to_dec_proj(chroma) looped/truncated to chroma_length | projected text states ]
    decoder input = prefix (P = chroma_length + text tokens embeddings) followed by the audio tokens (BOS first)

with positions 0..P-1 for the prefix, P for BOS, and a plain causal mask (no padding mask: one request
never has padded text tokens). Classifier-free guidance adds a null row per request whose prefix is
[ projection of the null chroma (one-hot bin 0, same length — the projection bias is included) |
zeros (text nulled AFTER its projection) ]. Text-only requests use the null chroma in their
conditional row too.

Graphs (exported by export/onnx_export.py, names below):
  melody_condition.onnx   chroma [B,Tc,12] float, encoder_hidden_states [B,T,H] -> inputs_embeds [B,L+T,H]
  melody_decoder_step.onnx inputs_embeds [B,E,H], input_ids [B,K,S], position_ids [B,E+S], seqlens_k [B],
                           total_sequence_length [], past_key_values.{i}.decoder.{key,value} [B,h,capacity,d]
                           -> logits [B,K,S,V] (token positions only), present.* (the same buffers: in place)
The step graph takes the prefix embeddings and the BOS ids together (a prefill's first chunk, E = P, on a
new generation's own cache rows) or token ids alone (E = 0: its later chunks, and the decode step of
every running row at its own position).
Generations at different steps, with prefixes of different lengths, share one batched decode step.

The loop is lm.LanguageModel's; a request's `chroma` (chroma.chroma(...)) is optional.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import manifest as manifest_mod, names
from .chroma import ChromaConfig, MelodyInputError, null_chroma
from .lm import Generation, GenerationRequest, LanguageModel
from .onnx_session import GraphError, open_graph
from .step_graph import StepGraph
from .validation import GenerationParams

MODEL_TYPE = "musicgen_melody"
CHROMA = "chroma"  # condition graph input [B, Tc, num_chroma]
INPUTS_EMBEDS = "inputs_embeds"  # condition graph output / step graph input [B, E, H]
CONDITION_FILE = "melody_condition.onnx"
DECODER_STEP_FILE = "melody_decoder_step.onnx"
DECODER_STEP_BLOCKWISE_INT8_FILE = "melody_decoder_step_blockwise_int8.onnx"  # int8 exports (step_graph)


class MelodyConditioner:
    """melody_condition graph: chroma projected and looped/truncated to chroma_length, then the text states."""

    def __init__(self, graph: str | Path, device: str = "cpu", threads: int | None = None):
        self.sess = open_graph(
            graph,
            device,
            threads,
            expect_inputs=[CHROMA, names.ENCODER_HIDDEN_STATES],
            expect_outputs=[INPUTS_EMBEDS],
            spin=False,
        )
        self.num_chroma = int(self.sess.get_inputs()[0].shape[-1])

    def __call__(self, chroma: np.ndarray, text_states: np.ndarray) -> np.ndarray:
        """chroma [B, Tc, C], text_states [B, T, H] -> [B, chroma_length + T, H] float32."""
        out = self.sess.run(
            [INPUTS_EMBEDS],
            {CHROMA: np.asarray(chroma, np.float32), names.ENCODER_HIDDEN_STATES: np.asarray(text_states, np.float32)},
        )[0]
        return out.astype(np.float32, copy=False)


class MelodyLanguageModel(LanguageModel):
    """melody_condition + melody_decoder_step graphs of one MusicGen-Melody export. A new generation's
    prefill (prefix + BOS, + a prompt's columns) runs on its own rows from the next step, then it decodes
    with the others."""

    model_type = MODEL_TYPE

    def open_graphs(self, model_dir: Path, threads: int | None, blockwise_int8_max_rows: int) -> StepGraph:
        mel = self.manifest.get("melody") or {}
        try:
            self.chroma_length = int(mel["chroma_length"])
            self.num_chroma = int(mel["num_chroma"])
            self.position_table = int(mel["position_table"])
        except (KeyError, TypeError, ValueError) as exc:
            raise manifest_mod.ManifestError(f"melody manifest lacks {exc}: re-export") from None
        self.chroma_config = ChromaConfig.from_manifest(self.manifest)
        self.condition_graph = MelodyConditioner(model_dir / CONDITION_FILE, self.device, threads)
        if self.condition_graph.num_chroma != self.num_chroma:
            raise GraphError(
                f"{CONDITION_FILE} takes {self.condition_graph.num_chroma} chroma bins, manifest says {self.num_chroma}"
            )
        return StepGraph(
            model_dir,
            DECODER_STEP_FILE,
            DECODER_STEP_BLOCKWISE_INT8_FILE,
            [INPUTS_EMBEDS],
            self.dims,
            past_per_layer=2,
            device=self.device,
            threads=threads,
            blockwise_int8_max_rows=blockwise_int8_max_rows,
        )

    def capacity(self, max_steps: int | None) -> int:
        if max_steps is None:
            return self.position_table
        return min(self.position_table, self.chroma_length + self.dims.max_text_tokens + max_steps + 1)

    def prefix(
        self, text_states: np.ndarray, text_mask: np.ndarray, chroma: np.ndarray | None, guidance_scale: float
    ) -> np.ndarray:
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
        return self.condition_graph(chromas, texts)

    def condition(self, request: GenerationRequest, params: GenerationParams) -> tuple[np.ndarray, int]:
        prefix = self.prefix(request.text_states, request.text_mask, request.chroma, params.guidance_scale)
        return prefix, int(prefix.shape[1])

    def prefix_positions(self, text_tokens: int) -> int:
        return self.chroma_length + text_tokens

    def decode_inputs(self) -> dict:
        return {"extra": {INPUTS_EMBEDS: np.zeros((self.rows.used, 0, self.dims.hidden_size), np.float32)}}

    def prefill_inputs(self, gen: Generation, rows: slice) -> dict:
        """The prefix embeddings in the first chunk; later chunks continue after them, as decode steps do."""
        embeds = gen.condition[rows]
        return {"extra": {INPUTS_EMBEDS: embeds if gen.prefilled == 0 else embeds[:, :0]}}

    def run_step(self, embeds: np.ndarray, ids: np.ndarray, pos: np.ndarray, cache, first_row: int = 0) -> np.ndarray:
        """The step graph on rows [first_row, first_row + len(ids)) of `cache` (verification): embeds
        [rows, E, H] (E = 0 when decoding) · ids [rows, K, S] · pos [rows, E + S] positions of the new
        entries, which are also their cache indices → logits [rows, K, S, V]."""
        return self.decoder.run(ids, pos, cache, first_row, extra={INPUTS_EMBEDS: embeds})
