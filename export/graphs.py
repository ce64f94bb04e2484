"""PyTorch modules that are exported to ONNX, built on a loaded HF MusicGen model's own weights.

Text-only MusicGen: TextEncoder, CrossKV, DecoderStep (cross-attention), AudioDecoder.
MusicGen-Melody: the same TextEncoder and AudioDecoder, MelodyCondition and PrefixDecoderStep
(conditioning prepended to the decoder input, no cross-attention).

`DecoderStep` re-expresses `MusicgenDecoder.forward` as one explicit step with a KV cache, per-row
positions and a self-attention mask, so rows at different steps can share a batch. It reads
the same parameters as the HF model (no copies); the export parity tests compare it — and the
ONNX graph made from it — against the HF model itself.
"""

from __future__ import annotations

import torch
from torch.onnx import symbolic_helper
from torch import nn

from musicgen_runtime import names
from musicgen_runtime.melody_lm import INPUTS_EMBEDS

from . import codec_graph


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


def packed_projection(h, *linears: nn.Linear):
    """The linears of the same input as one MatMul (outputs side by side): the export folds the
    concatenated weights into one initializer, so a decode step reads one [H, 3H] matrix in one kernel
    instead of three (measured: 26.7 -> 24.2 ms per blockwise-int8 step of one request)."""
    weight = torch.cat([lin.weight for lin in linears])
    bias = None
    if any(lin.bias is not None for lin in linears):
        bias = torch.cat(
            [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features) for lin in linears]
        )
    return nn.functional.linear(h, weight, bias)


class InPlaceAttention(torch.autograd.Function):
    """Self-attention over a preallocated KV cache, exported as ORT's GroupQueryAttention.

    qkv [B,S,3*H*D] is Q, K and V of the new tokens side by side (GroupQueryAttention's packed input).
    Row b's S new tokens are written at cache positions seqlens_k[b]-S+1 .. seqlens_k[b]; queries
    attend causally to positions <= their own. At run time the cache input and output are bound
    to the same buffer, so ORT writes the new K/V in place (no Concat of the whole past per step).
    """

    @staticmethod
    def forward(ctx, qkv, past_k, past_v, seqlens_k, total_len, heads: int, head_dim: int):
        q, k, v = qkv.split(heads * head_dim, dim=-1)
        b, s, hidden = q.shape
        d = head_dim
        cap = past_k.shape[2]
        start = (seqlens_k.long() - s + 1)[:, None] + torch.arange(s)[None, :]  # [B, S] write positions
        idx = start[:, None, :, None].expand(b, heads, s, d)
        present_k = past_k.clone().scatter(2, idx, k.view(b, s, heads, d).transpose(1, 2))
        present_v = past_v.clone().scatter(2, idx, v.view(b, s, heads, d).transpose(1, 2))
        allowed = torch.arange(cap)[None, None, None, :] <= start[:, None, :, None]
        w = torch.matmul(q.view(b, s, heads, d).transpose(1, 2), present_k.transpose(2, 3)) * d**-0.5
        w = torch.softmax(w.masked_fill(~allowed, torch.finfo(w.dtype).min), dim=-1)
        out = torch.matmul(w, present_v).transpose(1, 2).reshape(b, s, hidden)
        return out, present_k, present_v

    @staticmethod
    def symbolic(g, qkv, past_k, past_v, seqlens_k, total_len, heads: int, head_dim: int):
        packed = symbolic_helper._optional_input_placeholder_tensor(g)  # key, value: inside qkv
        return g.op(
            "com.microsoft::GroupQueryAttention",
            qkv,
            packed,
            packed,
            past_k,
            past_v,
            seqlens_k,
            total_len,
            num_heads_i=heads,
            kv_num_heads_i=heads,
            scale_f=float(head_dim) ** -0.5,
            outputs=3,
        )


def cross_attention(q, k, v, key_mask, heads: int, head_dim: int):
    """q [B,S,H*D] attending to k, v [B,H,T,D] where key_mask [B,T] is nonzero -> [B,S,H*D]."""
    b, s, hidden = q.shape
    q = q.view(b, s, heads, head_dim).transpose(1, 2)
    w = torch.matmul(q, k.transpose(2, 3)) * head_dim**-0.5
    w = w.masked_fill(key_mask[:, None, None, :] == 0, torch.finfo(w.dtype).min)
    return torch.matmul(torch.softmax(w, dim=-1), v).transpose(1, 2).reshape(b, s, hidden)


class CrossAttention(torch.autograd.Function):
    """Attention of the new tokens to the text states' precomputed K/V, exported as ORT's MultiHeadAttention.

    q [B,S,H*D] · k, v [B,H,T,D] · key_mask int32 [B,T] (1 = attend) -> [B,S,H*D]. One node per layer
    instead of the reshapes, transposes, shape arithmetic, two MatMuls and softmax that the plain ops
    export to (each a separate kernel launch on every step). A row whose mask is all zero (the null
    condition of classifier-free guidance) attends uniformly, as with the additive mask.
    """

    @staticmethod
    def forward(ctx, q, k, v, key_mask, heads: int, head_dim: int):
        return cross_attention(q, k, v, key_mask, heads, head_dim)

    @staticmethod
    def symbolic(g, q, k, v, key_mask, heads: int, head_dim: int):
        no_bias = symbolic_helper._optional_input_placeholder_tensor(g)
        return g.op(
            "com.microsoft::MultiHeadAttention",
            q,
            k,
            v,
            no_bias,
            key_mask,
            num_heads_i=heads,
            scale_f=float(head_dim) ** -0.5,
        )


class DecoderStep(nn.Module):
    """One decoder step for S new tokens per row, on a preallocated (in-place) self-attention cache.

    input_ids [B,K,S] · position_ids [B,S] · seqlens_k int32 [B] (cache index of each row's last new
    token) · total_sequence_length int32 [] · encoder_attention_mask [B,T] · per layer: self K/V cache
    [B,H,capacity,D] and cross K/V [B,H,T,D] → logits [B,K,S,V] and the updated caches (same shape;
    bind them to the input buffers). With an empty cache (seqlens_k = S-1) this is the prefill.
    """

    def __init__(self, model, position_table: int | None = None, fused_cross_attention: bool = True):
        super().__init__()
        self.fused_cross_attention = fused_cross_attention
        lm = model.decoder
        dec = lm.model.decoder
        self.embed_tokens = dec.embed_tokens
        pos = dec.embed_positions.weights.detach()
        if position_table is not None and pos.shape[0] < position_table:
            # the same sinusoids HF computes when it extends its table (melody: prefix + tokens)
            pos = type(dec.embed_positions).get_embedding(position_table, pos.shape[1]).to(pos.dtype)
        self.register_buffer("positions", pos[:position_table].clone(), persistent=False)
        self.layers = dec.layers
        self.layer_norm = dec.layer_norm
        self.lm_heads = lm.lm_heads
        cfg = model.config.decoder
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads

    def _cross(self, att, x, k, v, key_mask):
        attend = CrossAttention.apply if self.fused_cross_attention else cross_attention
        return att.out_proj(attend(att.q_proj(x), k, v, key_mask, self.heads, self.head_dim))

    def embed(self, input_ids):
        """Sum of the K codebook embeddings, [B, S, H]."""
        x = self.embed_tokens[0](input_ids[:, 0])
        for k in range(1, input_ids.shape[1]):
            x = x + self.embed_tokens[k](input_ids[:, k])
        return x

    def self_attention(self, layer, x, past_k, past_v, seqlens_k, total_len):
        """x + the layer's self-attention over the in-place cache; also the updated cache."""
        att = layer.self_attn
        h = layer.self_attn_layer_norm(x)
        o, nk, nv = InPlaceAttention.apply(
            packed_projection(h, att.q_proj, att.k_proj, att.v_proj),
            past_k,
            past_v,
            seqlens_k,
            total_len,
            self.heads,
            self.head_dim,
        )
        return x + att.out_proj(o), nk, nv

    def feed_forward(self, layer, x):
        return x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))

    def logits(self, x):
        """Final norm and the K heads: [B, S, H] -> [B, K, S, V]."""
        x = self.layer_norm(x)
        return torch.stack([head(x) for head in self.lm_heads], dim=1)

    def forward(self, input_ids, position_ids, seqlens_k, total_len, encoder_attention_mask, *past):
        x = self.embed(input_ids) + self.positions[position_ids]
        key_mask = encoder_attention_mask.to(torch.int32)

        presents = []
        for i, layer in enumerate(self.layers):
            pk, pv, ck, cv = past[4 * i : 4 * i + 4]
            x, nk, nv = self.self_attention(layer, x, pk, pv, seqlens_k, total_len)
            presents += [nk, nv]
            h = layer.encoder_attn_layer_norm(x)
            x = x + self._cross(layer.encoder_attn, h, ck, cv, key_mask)
            x = self.feed_forward(layer, x)
        return (self.logits(x), *presents)


class PrefixDecoderStep(DecoderStep):
    """E prefix embeddings + S tokens per row on a preallocated (in-place) self-attention cache (melody).

    inputs_embeds [B,E,H] · input_ids [B,K,S] · position_ids [B,E+S] (also the new entries' cache
    indices) · seqlens_k int32 [B] (cache index of each row's last new entry) · total_sequence_length
    int32 [] · per layer K/V cache [B,h,capacity,d] → logits [B,K,S,V] of the S tokens and the
    caches (bind them to the input buffers). Prefill: E = prefix, S = 1 (BOS) on empty rows.
    """

    def forward(self, inputs_embeds, input_ids, position_ids, seqlens_k, total_len, *past):
        tok = self.embed(input_ids)
        x = torch.cat([inputs_embeds.to(tok.dtype), tok], dim=1) + self.positions[position_ids]
        presents = []
        for i, layer in enumerate(self.layers):  # no cross-attention: the conditioning is the prefix
            x, nk, nv = self.self_attention(layer, x, past[2 * i], past[2 * i + 1], seqlens_k, total_len)
            presents += [nk, nv]
            x = self.feed_forward(layer, x)
        return (self.logits(x[:, inputs_embeds.shape[1] :]), *presents)


class MelodyCondition(nn.Module):
    """Projected chroma looped/truncated to chroma_length (index = arange(L) % Tc), then the text states."""

    def __init__(self, model):
        super().__init__()
        self.proj = getattr(model, "audio_enc_to_dec_proj", None)
        self.length = int(model.config.chroma_length)

    def forward(self, chroma, encoder_hidden_states):
        a = self.proj(chroma) if self.proj is not None else chroma
        idx = torch.remainder(torch.arange(self.length), torch._shape_as_tensor(a)[1])
        a = torch.index_select(a, 1, idx)
        return torch.cat([a, encoder_hidden_states.to(a.dtype)], dim=1)


def codec_channels(model) -> int:
    """Channels the (mono) EnCodec runs once each: 2 for a stereo LM, whose codebooks interleave
    [1L,1R,2L,2R,...] (transformers decodes the even and the odd codebooks on their own)."""
    lm, codec = model.config.decoder.audio_channels, model.config.audio_encoder.audio_channels
    if codec != 1 and codec != lm:
        raise ValueError(f"an LM with {lm} audio channels over a {codec}-channel EnCodec: not exported")
    return lm if codec == 1 else 1


class AudioDecoder(nn.Module):
    """A window of a clip's EnCodec codes -> its audio, carrying what the next window needs (codec.py plans
    the windows; see codec_graph for the rewrite of the layers).

    audio_codes [1, B, K, W]: the codes window. The embedding and first convolution run over all of it (with
    the codec's reflect padding at its ends); the LSTM runs over frames [frame_range[0], frame_range[1]) of
    it from `lstm_state` [2 (h, c), layers, rows, H]; `hidden_before` [rows, H, n] (the last hidden frames
    of the previous window, n >= 0) goes before its output (state and hidden frames of one row are broadcast
    to all), and the upsampling stack runs over them all:
    audio [B, channels, (n + frames) * hop], the LSTM's state at the end, and the hidden frames decoded.
    rows = B x channels: a stereo LM's codebooks (interleaved [1L,1R,2L,2R,...]) are decoded per channel,
    each as a row, as transformers does."""

    def __init__(self, model):
        super().__init__()
        codec = codec_graph.export_decoder(model.audio_encoder)
        self.quantizer = codec.quantizer
        self.embed_conv = codec.decoder.layers[0]
        self.lstm = codec.decoder.layers[1].lstm  # EncodecLSTM's nn.LSTM: its skip connection is in forward
        self.upsample = nn.Sequential(*codec.decoder.layers[2:])
        self.channels = codec_channels(model)

    def forward(self, audio_codes, frame_range, lstm_state, hidden_before):
        c = self.channels
        _, b, k, t = audio_codes.shape
        rows = audio_codes.reshape(b, k // c, c, t).transpose(1, 2).reshape(b * c, k // c, t)
        x = self.embed_conv(self.quantizer.decode(rows.transpose(0, 1)))  # [rows, H, W]
        x = torch.index_select(x, 2, torch.arange(frame_range[0], frame_range[1])).permute(2, 0, 1)
        n = x.shape[1]  # a clip's first window brings a state of one row: broadcast to every row
        state = lstm_state.expand(-1, -1, n, -1)
        y, (h, cell) = self.lstm(x, (state[0], state[1]))
        hidden = torch.cat([hidden_before.expand(n, -1, -1), (y + x).permute(1, 2, 0)], dim=2)  # EncodecLSTM's skip
        audio = self.upsample(hidden)  # [rows, codec channels, samples]
        return audio.reshape(b, c * audio.shape[1], audio.shape[-1]), torch.stack([h, cell]), hidden


def step_io_names(num_layers: int):
    """Input and output names of the (cross-attention) decoder step graph, in argument order."""
    inputs = [
        names.INPUT_IDS,
        names.POSITION_IDS,
        names.SEQLENS_K,
        names.TOTAL_SEQUENCE_LENGTH,
        names.ENCODER_ATTENTION_MASK,
    ]
    outputs = [names.LOGITS]
    for i in range(num_layers):
        inputs += [
            names.past(i, "decoder", "key"),
            names.past(i, "decoder", "value"),
            names.past(i, "encoder", "key"),
            names.past(i, "encoder", "value"),
        ]
        outputs += [names.present(i, "key"), names.present(i, "value")]
    return inputs, outputs


def prefix_step_io_names(num_layers: int):
    """Input and output names of the prefix (melody) decoder step graph, in argument order."""
    inputs = [INPUTS_EMBEDS, names.INPUT_IDS, names.POSITION_IDS, names.SEQLENS_K, names.TOTAL_SEQUENCE_LENGTH]
    outputs = [names.LOGITS]
    for i in range(num_layers):
        inputs += [names.past(i, "decoder", "key"), names.past(i, "decoder", "value")]
        outputs += [names.present(i, "key"), names.present(i, "value")]
    return inputs, outputs


class AudioEncoder(nn.Module):
    """EnCodec encoder + quantizer: waveform [B, channels, samples] at the codec's rate -> codes [B, K, frames],
    frames = ceil(samples / hop); as transformers' `generate(input_values=...)` encodes a prompt (one
    chunk, the default bandwidth, no normalisation)."""

    def __init__(self, model):
        super().__init__()
        self.codec = model.audio_encoder
        self.channels = codec_channels(model)  # stereo: each channel encoded on its own, codes interleaved
        if getattr(self.codec.config, "normalize", False):
            raise ValueError("an EnCodec that normalizes its input needs the audio scales: not exported")

    def forward(self, input_values):
        c = self.channels
        if c == 1:
            return self.codec.encode(input_values).audio_codes[0]
        b, _, n = input_values.shape
        codes = self.codec.encode(input_values.reshape(b * c, 1, n)).audio_codes[0]  # [B * c, K/c, T]
        _, q, t = codes.shape
        return codes.reshape(b, c, q, t).transpose(1, 2).reshape(b, q * c, t)
