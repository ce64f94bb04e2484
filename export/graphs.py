"""PyTorch modules that are exported to ONNX, built on a loaded HF MusicGen model's own weights.

`DecoderStep` re-expresses `MusicgenDecoder.forward` as one explicit step with a KV cache, per-row
positions and a self-attention mask, so rows at different steps can share a batch. It reads
the same parameters as the HF model (no copies); the export parity tests compare it — and the
ONNX graph made from it — against the HF model itself.
"""

from __future__ import annotations

import torch
from torch import nn

from musicgen_runtime import names


class TextEncoder(nn.Module):
    """T5 encoder + enc_to_dec projection, padded positions zeroed (as HF does before cross-attention)."""

    def __init__(self, model):
        super().__init__()
        self.t5 = model.text_encoder
        self.proj = getattr(model, "enc_to_dec_proj", None)

    def forward(self, input_ids, attention_mask):
        h = self.t5(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.proj is not None:
            h = self.proj(h)
        return h * attention_mask[..., None].to(h.dtype)


class CrossKV(nn.Module):
    """Encoder states -> every layer's cross-attention K and V, computed once per request."""

    def __init__(self, model):
        super().__init__()
        dec = model.decoder.model.decoder
        self.layers = dec.layers
        self.heads = model.config.decoder.num_attention_heads

    def forward(self, encoder_hidden_states):
        b, t, hidden = encoder_hidden_states.shape
        out = []
        for layer in self.layers:
            att = layer.encoder_attn
            k = att.k_proj(encoder_hidden_states).view(b, t, self.heads, -1).transpose(1, 2)
            v = att.v_proj(encoder_hidden_states).view(b, t, self.heads, -1).transpose(1, 2)
            out += [k, v]
        return tuple(out)


class DecoderStep(nn.Module):
    """One decoder step for S new tokens per row, given the past self-attention K/V.

    input_ids [B,K,S] · position_ids [B,S] · attention_mask [B,P+S] (1 = attend; causal order inside
    the S new tokens is added here) · encoder_attention_mask [B,T] · past self K/V [B,H,P,D] and cross
    K/V [B,H,T,D] per layer → logits [B,K,S,V] and present self K/V [B,H,P+S,D].
    With P = 0 this is the prefill.
    """

    def __init__(self, model):
        super().__init__()
        lm = model.decoder
        dec = lm.model.decoder
        self.embed_tokens = dec.embed_tokens
        self.register_buffer("positions", dec.embed_positions.weights.detach().clone(), persistent=False)
        self.layers = dec.layers
        self.layer_norm = dec.layer_norm
        self.lm_heads = lm.lm_heads
        cfg = model.config.decoder
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim ** -0.5

    def _attend(self, att, x, k, v, mask):
        b, s, _ = x.shape
        q = att.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        w = torch.matmul(q, k.transpose(2, 3)) * self.scaling + mask
        w = torch.softmax(w, dim=-1)
        o = torch.matmul(w, v).transpose(1, 2).reshape(b, s, -1)
        return att.out_proj(o)

    def forward(self, input_ids, position_ids, attention_mask, encoder_attention_mask, *past):
        b, n_cb, s = input_ids.shape
        x = self.embed_tokens[0](input_ids[:, 0])
        for k in range(1, n_cb):
            x = x + self.embed_tokens[k](input_ids[:, k])
        x = x + self.positions[position_ids]
        dtype = x.dtype
        neg = torch.finfo(dtype).min

        total = attention_mask.shape[1]
        past_len = total - s
        # causal inside the new tokens: query i may see key j when j <= past_len + i
        key_idx = torch.arange(total, device=x.device)[None, :]
        query_idx = torch.arange(s, device=x.device)[:, None] + past_len
        allowed = (key_idx <= query_idx)[None, None] & (attention_mask[:, None, None, :] > 0)
        self_mask = torch.where(allowed, torch.zeros((), dtype=dtype), torch.full((), neg, dtype=dtype))
        cross_mask = ((1 - encoder_attention_mask[:, None, None, :].to(dtype)) * neg)

        presents = []
        for i, layer in enumerate(self.layers):
            pk, pv, ck, cv = past[4 * i: 4 * i + 4]
            h = layer.self_attn_layer_norm(x)
            att = layer.self_attn
            nk = att.k_proj(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
            nv = att.v_proj(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
            k_all = torch.cat([pk, nk], dim=2)
            v_all = torch.cat([pv, nv], dim=2)
            presents += [k_all, v_all]
            x = x + self._attend(att, h, k_all, v_all, self_mask)
            h = layer.encoder_attn_layer_norm(x)
            x = x + self._attend(layer.encoder_attn, h, ck, cv, cross_mask)
            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
        x = self.layer_norm(x)
        logits = torch.stack([head(x) for head in self.lm_heads], dim=1)  # [B, K, S, V]
        return (logits, *presents)


class AudioDecoder(nn.Module):
    """EnCodec codes [1, B, K, T] -> audio [B, channels, T * hop]."""

    def __init__(self, model):
        super().__init__()
        self.codec = model.audio_encoder

    def forward(self, audio_codes):
        return self.codec.decode(audio_codes, [None]).audio_values


def step_io_names(num_layers: int):
    """Input and output names of the decoder step graph, in argument order."""
    inputs = [names.INPUT_IDS, names.POSITION_IDS, names.ATTENTION_MASK, names.ENCODER_ATTENTION_MASK]
    outputs = [names.LOGITS]
    for i in range(num_layers):
        inputs += [names.past(i, "decoder", "key"), names.past(i, "decoder", "value"),
                   names.past(i, "encoder", "key"), names.past(i, "encoder", "value")]
        outputs += [names.present(i, "key"), names.present(i, "value")]
    return inputs, outputs
