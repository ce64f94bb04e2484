"""Verification building blocks: error measures, per-graph parity against the PyTorch model, causality,
and transformers' greedy generation (the oracle's reference)."""

from __future__ import annotations

import numpy as np

PROMPTS = ["lofi hip hop beat with mellow piano", "90s rock song with loud guitars and heavy drums, energetic"]
MIN_CODE_AGREEMENT = 0.99  # audio_encoder codes equal to PyTorch's (see encoder_parity)
FP32_TOL = 1e-3  # max abs error allowed for fp32 graphs (seen: ~1e-6)
REDUCED_TOL = {"fp16": 0.01, "int8": 0.10}  # logits rel-L2 vs fp32 PyTorch (measured on random weights)
STEP_GRAPHS = ("decoder_step", "decoder_step_blockwise_int8")  # report keys of the LM step graphs


def error_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """Max abs, max relative and relative-L2 error of `a` against the reference `b`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b)
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / max(np.abs(b).max(), 1e-12)),
        "rel_l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)),
        "shape": list(a.shape),
    }


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean fraction of the top-k ids of `b` (reference logits) also in the top-k of `a`, over all rows."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    k = min(k, a2.shape[-1])
    ta = np.argpartition(-a2, k - 1, axis=-1)[:, :k]
    tb = np.argpartition(-b2, k - 1, axis=-1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb)]))


def text_encoder_parity(model, enc, rng) -> dict:
    """text_encoder graph vs T5 + projection at batch 3, 11 tokens, one row padded (export example: 2 x 7)."""
    import torch

    ids = rng.integers(3, 100, (3, 11))
    mask = np.ones((3, 11), np.int64)
    mask[2, 6:] = 0
    with torch.no_grad():
        out = model.text_encoder(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
        if getattr(model, "enc_to_dec_proj", None) is not None:
            out = model.enc_to_dec_proj(out)
        ref_states = (out * torch.tensor(mask)[..., None]).numpy()
    return error_stats(enc(ids, mask), ref_states)


def hf_decode(model, codes: np.ndarray) -> np.ndarray:
    """codes [B, K, T] -> audio [B, channels, samples] as transformers' generate decodes them (stereo:
    the even codebooks, then the odd ones, each decoded on its own)."""
    import torch

    from .graphs import codec_channels

    ch = codec_channels(model)
    with torch.no_grad():
        waves = [
            model.audio_encoder.decode(torch.tensor(codes[:, c::ch])[None], [None]).audio_values for c in range(ch)
        ]
    return torch.cat(waves, dim=1).numpy()


def hf_encode(model, wave: np.ndarray) -> np.ndarray:
    """wave [channels, samples] -> codes [K, frames] as transformers' generate encodes an audio prompt
    (stereo: each channel on its own, codebooks interleaved [1L,1R,2L,2R,...])."""
    import torch

    from .graphs import codec_channels

    ch = codec_channels(model)
    with torch.no_grad():
        per = [model.audio_encoder.encode(torch.tensor(wave[c::ch])[None]).audio_codes[0, 0] for c in range(ch)]
    return torch.stack(per, dim=1).reshape(-1, per[0].shape[-1]).numpy()


def codec_parity(model, dec, dims, rng) -> dict:
    """audio_decoder graph vs EnCodec at batch 1, 13 frames (export example: batch 2, 10 frames)."""
    codes = rng.integers(0, dims.vocab_size, (1, dims.num_codebooks, 13))
    return error_stats(dec(codes), hf_decode(model, codes))


def codec_chunked_parity(model, dec, dims, rng) -> dict:
    """A 60-frame clip decoded chunk by chunk as a stream is (chunks of 4 to 20 frames, the state packed and
    unpacked between them as it crosses Triton) vs EnCodec decoding it whole."""
    from musicgen_runtime.codec import CodecState
    from musicgen_runtime.streaming import ChunkPlan

    total = 60
    codes = rng.integers(0, dims.vocab_size, (1, dims.num_codebooks, total))
    state, parts = None, []
    for _, b in ChunkPlan(chunk=5, reach=dec.reach, first=4, max_chunk=20).ready_chunks(0, total, total):
        audio, after = dec.decode(codes[..., : dec.reach.needed(b, total)], total, b, state)
        state = CodecState.unpack(after.pack(), dec.layers, dec.width)
        parts.append(audio)
    return {**error_stats(np.concatenate(parts, axis=-1), hf_decode(model, codes)), "chunks": len(parts)}


def encoder_parity(model, enc, dims) -> dict:
    """audio_encoder graph vs EnCodec's `encode` on a 1.3 s test melody (export example: 2 x 4603 samples):
    the fraction of codes equal. Codes are nearest-codeword indices, and ORT and PyTorch sum the distances
    in different orders: a frame whose two nearest codewords are within float rounding of each other may
    pick the other one (and residual quantization carries that into the frame's later codebooks). Such
    ties are rare on real audio, so >= MIN_CODE_AGREEMENT is required rather than exact equality."""
    from .signals import synth_melody

    wave = synth_melody(1.3, dims.sample_rate, dims.audio_channels, seed=3)  # stereo: channels differ
    ref = hf_encode(model, wave)
    ours = enc.encode(wave)
    agree = float((ours == ref).mean()) if ours.shape == ref.shape else 0.0
    return {
        "code_agreement": agree,
        "shape": list(ours.shape),
        "reference_shape": list(ref.shape),
        "required": MIN_CODE_AGREEMENT,
        "passed": agree >= MIN_CODE_AGREEMENT,
    }


def step_graphs_parity(lm, run, ref, report: dict) -> np.ndarray:
    """Logits of `run()` (steps of 2 rows) vs `ref` for the main step graph, and for an int8 export's
    blockwise-int8 graph too (it runs such steps in service). Returns the main graph's logits."""
    step = lm.decoder
    max_rows, step.blockwise_int8_max_rows = step.blockwise_int8_max_rows, 0  # the main graph first, even at 2 rows
    try:
        ours = run()
    finally:
        step.blockwise_int8_max_rows = max_rows
    report["graphs"]["decoder_step"] = error_stats(ours, ref)
    if step.blockwise_int8_sess is not None:
        blockwise = run()
        report["graphs"]["decoder_step_blockwise_int8"] = error_stats(blockwise, ref)
        report["checks"]["top250_overlap_blockwise_int8"] = topk_overlap(blockwise, ref, 250)
    return ours


def reduced_graphs_ok(report: dict, bound: float) -> bool:
    """Reduced precision: every step graph's logits within rel-L2 `bound` of fp32 PyTorch."""
    return all(report["graphs"][g]["rel_l2"] < bound for g in STEP_GRAPHS if g in report["graphs"])


def causality(full, changed, ref, precision: str) -> dict:
    """Logits [.., positions, V] of one block before/after changing its last token: earlier positions must not move.

    Dynamic int8 quantizes activations with one scale per tensor, so earlier positions move by
    quantization noise; allowed: twice that graph's own error against fp32 PyTorch (`ref`) at those
    positions. A causality bug moves them by the size of the logits' response to the token instead.
    """
    change = float(np.abs(full[..., :-1, :] - changed[..., :-1, :]).max())
    noise = float(np.abs(full[..., :-1, :] - ref[..., :-1, :]).max())
    allowed = 0.0 if precision in ("fp32", "fp16") else 2.0 * noise
    return {"causal_max_change": change, "causal_allowed": allowed, "causal": bool(change <= allowed)}


def hf_greedy_codes(
    model, tokenizer, prompt: str, steps: int, guidance: float = 3.0, chroma=None, audio_prompt=None, prompt_codes=None
):
    """Codes [K, frames] and audio that transformers' generate decodes (recorded at audio_encoder.decode).

    `chroma` [frames, 12]: the melody features of a MusicGen-Melody model (None: text only).
    `audio_prompt` [channels, samples] at the codec's rate: continued (`input_values`); the codes then
    start with the prompt's, and `steps` new steps follow. `prompt_codes` [K, P]: codes continued
    (`decoder_input_ids`, as a long clip's later windows), likewise first in the codes.
    """
    import torch

    rec = []
    orig = model.audio_encoder.decode

    def recording(codes, *a, **k):
        rec.append(codes.detach().clone())
        return orig(codes, *a, **k)

    model.audio_encoder.decode = recording
    try:
        inp = dict(tokenizer([prompt], return_tensors="pt"))
        if chroma is not None:
            inp["input_features"] = torch.tensor(chroma, dtype=torch.float32)[None]
        if audio_prompt is not None:
            inp["input_values"] = torch.tensor(audio_prompt, dtype=torch.float32)[None]
            # [1, samples], as the feature extractor makes it ([1, channels, samples] breaks stereo: the
            # encoder then masks each channel's encode with both channels and encodes two)
            inp["padding_mask"] = torch.ones(1, audio_prompt.shape[-1], dtype=torch.long)
        if prompt_codes is not None:
            inp["decoder_input_ids"] = torch.tensor(np.asarray(prompt_codes), dtype=torch.long)
        with torch.no_grad():
            audio = model.generate(**inp, do_sample=False, guidance_scale=guidance, max_new_tokens=steps)
    finally:
        del model.audio_encoder.decode
    if len(rec) == 2:  # stereo: even codebooks decoded first, then the odd ones
        full = torch.empty(rec[0].shape[:2] + (2 * rec[0].shape[2],) + rec[0].shape[3:], dtype=rec[0].dtype)
        full[:, :, 0::2], full[:, :, 1::2] = rec[0], rec[1]
        rec = [full]
    return rec[0][0, 0].numpy(), audio[0].numpy()
