"""Parity of each LM graph family against the PyTorch decoder, at shapes unlike the export example:
stepping token by token on the in-place cache, all tokens at once (prefill), causality.

Each `*_checks(model, lm, rng, report, precision)` fills `report["graphs"]` and `report["checks"]`.
"""

from __future__ import annotations

import math

import numpy as np

from .parity import causality, error_stats, step_graphs_parity, topk_overlap


# -- text-only: cross-attention step ---------------------------------------------------------------------


def cross_attention_checks(model, lm, rng, report: dict, precision: str) -> None:
    """decoder_step vs the HF decoder's full (uncached) forward, 2 rows, one with a padded text mask."""
    import torch

    dims = lm.dims
    k, v = dims.num_codebooks, dims.vocab_size
    n_tok, t_text = 9, 5
    states = rng.standard_normal((2, t_text, dims.hidden_size)).astype(np.float32)
    enc_mask = np.ones((2, t_text), np.int64)
    enc_mask[1, 3:] = 0
    tokens = rng.integers(0, v, (2, k, n_tok))
    tokens[:, :, 0] = dims.pad_token_id
    with torch.no_grad():
        ref = model.decoder(
            input_ids=torch.tensor(tokens).reshape(2 * k, n_tok),
            encoder_hidden_states=torch.tensor(states),
            encoder_attention_mask=torch.tensor(enc_mask),
        ).logits
    ref = ref.reshape(2, k, n_tok, v).numpy()
    cross = [lm.decoder.value(np.ascontiguousarray(c)) for c in lm.cross_kv(states)]
    ours = step_graphs_parity(lm, lambda: _cross_steps(lm, tokens, cross, enc_mask), ref, report)
    report["checks"]["top250_overlap"] = topk_overlap(ours, ref, 250)
    report["checks"]["argmax_agreement"] = float((ours.argmax(-1) == ref.argmax(-1)).mean())

    # causality: all tokens at once (S = n_tok, empty past); changing the last token changes no earlier logit
    full = _cross_block(lm, tokens, cross, enc_mask)
    changed = tokens.copy()
    changed[:, :, -1] = (changed[:, :, -1] + 1) % v
    full2 = _cross_block(lm, changed, cross, enc_mask)
    report["checks"].update(causality(full, full2, ref, precision))
    report["graphs"]["decoder_step_block"] = error_stats(full, ref)


def _cross_steps(lm, tokens, cross, enc_mask):
    """Feed the tokens one step at a time through the in-place cache; logits [rows, K, n, V]."""
    rows, _, n = tokens.shape
    cache = lm.decoder.new_cache(rows, n + 2)
    out = [
        lm.run_step(tokens[:, :, t : t + 1], np.full((rows, 1), t, np.int64), enc_mask, cache, cross) for t in range(n)
    ]
    return np.concatenate(out, axis=2).astype(np.float32)


def _cross_block(lm, tokens, cross, enc_mask):
    """All tokens in one call (S = n) on an empty cache: the prefill path."""
    rows, _, n = tokens.shape
    cache = lm.decoder.new_cache(rows, n + 2)
    return lm.run_step(tokens, np.tile(np.arange(n), (rows, 1)), enc_mask, cache, cross).astype(np.float32)


# -- melody: condition graph and prefix step ---------------------------------------------------------------


def _ref_prefix(model, text_states, text_mask, chroma):
    """transformers' conditioning for one row: [proj(chroma) looped/cut to chroma_length | text * mask]."""
    import torch

    a = torch.tensor(chroma, dtype=torch.float32)[None]
    if getattr(model, "audio_enc_to_dec_proj", None) is not None:
        a = model.audio_enc_to_dec_proj(a)
    L = model.config.chroma_length
    if a.shape[1] < L:
        a = a.repeat(1, int(math.ceil(L / a.shape[1])), 1)
    a = a[:, :L]
    t = torch.tensor(text_states)[None] * torch.tensor(text_mask, dtype=torch.float32)[None, :, None]
    return torch.cat([a, t], dim=1)


def prefix_checks(model, lm, rng, report: dict, precision: str) -> None:
    """melody_condition (chroma shorter and longer than its window), then melody_decoder_step: stepping
    after a prefill, all at once, causality, and rows whose prefixes differ in length in one batch."""
    import torch

    dims = lm.dims
    k, v, hsz = dims.num_codebooks, dims.vocab_size, dims.hidden_size
    C, L = lm.num_chroma, lm.chroma_length

    # condition: chroma shorter than, and longer than, the window (export example: 5 frames)
    worst = None
    for frames in (3, L + 9):
        ch = np.zeros((2, frames, C), np.float32)
        ch[np.arange(2)[:, None], np.arange(frames)[None], rng.integers(0, C, (2, frames))] = 1
        st = rng.standard_normal((2, 6, hsz)).astype(np.float32)
        with torch.no_grad():
            ref = torch.cat([_ref_prefix(model, st[i], np.ones(6), ch[i]) for i in range(2)]).numpy()
        e = error_stats(lm.condition_graph(ch, st), ref)
        worst = e if worst is None or e["max_abs"] > worst["max_abs"] else worst
    report["graphs"]["melody_condition"] = worst

    # decoder: HF's full forward (prefix + tokens, no cache) vs ours stepping token by token after a prefill
    n_tok, plen = 9, L + 4
    prefix = rng.standard_normal((2, plen, hsz)).astype(np.float32)
    tokens = rng.integers(0, v, (2, k, n_tok))
    tokens[:, :, 0] = dims.pad_token_id
    with torch.no_grad():
        ref = model.decoder(
            input_ids=torch.tensor(tokens).reshape(2 * k, n_tok), encoder_hidden_states=torch.tensor(prefix)
        ).logits
    ref = ref.reshape(2, k, plen + n_tok, v)[:, :, plen:].numpy()
    ours = step_graphs_parity(lm, lambda: _prefix_steps(lm, prefix, tokens), ref, report)
    report["checks"]["argmax_agreement"] = float((ours.argmax(-1) == ref.argmax(-1)).mean())

    # all at once (prefix + every token in one call) and causality within it
    full = _prefix_block(lm, prefix, tokens)
    report["graphs"]["decoder_step_block"] = error_stats(full, ref)
    changed = tokens.copy()
    changed[:, :, -1] = (changed[:, :, -1] + 1) % v
    full2 = _prefix_block(lm, prefix, changed)
    report["checks"].update(causality(full, full2, ref, precision))

    # rows with prefixes of different lengths in one batch: own rows, own positions
    short = prefix[1:, 5:]  # row 1 with a shorter prefix
    with torch.no_grad():
        ref_short = model.decoder(
            input_ids=torch.tensor(tokens[1:]).reshape(k, n_tok), encoder_hidden_states=torch.tensor(short)
        ).logits
    ref_short = ref_short.reshape(1, k, plen - 5 + n_tok, v)[:, :, plen - 5 :].numpy()
    mixed = _prefix_mixed(lm, [prefix[0], short[0]], tokens)
    report["graphs"]["decoder_step_mixed_prefix"] = error_stats(mixed, np.concatenate([ref[:1], ref_short]))


def _prefix_steps(lm, prefix, tokens):
    """Prefill (prefix + first token), then one token per call on the in-place cache; logits [B, K, n, V]."""
    rows, _, n = tokens.shape
    plen = prefix.shape[1]
    cache = lm.decoder.new_cache(rows, plen + n + 2)
    out = [lm.run_step(prefix, tokens[:, :, :1], np.tile(np.arange(plen + 1), (rows, 1)), cache)]
    none = np.zeros((rows, 0, lm.dims.hidden_size), np.float32)
    for t in range(1, n):
        out.append(lm.run_step(none, tokens[:, :, t : t + 1], np.full((rows, 1), plen + t), cache))
    return np.concatenate(out, axis=2).astype(np.float32)


def _prefix_block(lm, prefix, tokens):
    """Prefix and every token in one call on an empty cache."""
    rows, _, n = tokens.shape
    plen = prefix.shape[1]
    cache = lm.decoder.new_cache(rows, plen + n + 2)
    return lm.run_step(prefix, tokens, np.tile(np.arange(plen + n), (rows, 1)), cache).astype(np.float32)


def _prefix_mixed(lm, prefixes, tokens):
    """Rows whose prefixes differ in length: each prefilled on its own cache row (as requests join),
    then the remaining tokens stepped together, each row at its own position."""
    rows, _, n = tokens.shape
    plens = [p.shape[0] for p in prefixes]
    cache = lm.decoder.new_cache(rows, max(plens) + n + 2)
    first = [
        lm.run_step(p[None], tokens[r : r + 1, :, :1], np.arange(plens[r] + 1)[None], cache, first_row=r)
        for r, p in enumerate(prefixes)
    ]
    out = [np.concatenate(first)]
    none = np.zeros((rows, 0, lm.dims.hidden_size), np.float32)
    for t in range(1, n):
        out.append(lm.run_step(none, tokens[:, :, t : t + 1], np.array([[pl + t] for pl in plens]), cache))
    return np.concatenate(out, axis=2).astype(np.float32)
