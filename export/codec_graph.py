"""The EnCodec decoder rewritten for export: the same function, fewer full-size copies per call.

As traced from `transformers`, every convolution of the decoder exports as a zero Pad, a reflect
Pad and a Slice of the whole activation (HF's guard for inputs shorter than the padding), and every
transposed convolution as ConvTranspose then a Slice; weight norm is recomputed on every call. At
5 s of audio the activations reach 64 channels x 160 000 samples (41 MB), so each copy costs
milliseconds. Here the weights are folded; a convolution pads once, with static sizes (its input is
longer than its padding: the runtime decodes at least MIN_FRAMES frames, and the trace bakes HF's
short-input branch out anyway); a transposed convolution whose trim is symmetric trims inside the
ConvTranspose (its `pads`). The export parity test compares the result with HF's `decode`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from musicgen_runtime.codec import MIN_FRAMES


def plain_conv(conv: nn.Module) -> nn.Module:
    """A plain copy of Conv1d / ConvTranspose1d `conv` holding its current weight (weight norm folded)."""
    kind = nn.ConvTranspose1d if isinstance(conv, nn.ConvTranspose1d) else nn.Conv1d
    out = kind(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        out.weight.copy_(conv.weight)
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out.eval()


class StaticPadConv(nn.Module):
    """A stride-1 EncodecConv1d on inputs longer than its padding: one Pad with static sizes, then Conv."""

    def __init__(self, enc_conv):
        super().__init__()
        self.conv = plain_conv(enc_conv.conv)
        k, d = self.conv.kernel_size[0], self.conv.dilation[0]
        total = (k - 1) * d  # HF: effective kernel - stride; its extra right padding is 0 at stride 1
        right = 0 if enc_conv.causal else total // 2
        self.pads = (total - right, right)
        self.mode = enc_conv.pad_mode

    @property
    def max_pad(self) -> int:
        return max(self.pads)

    def forward(self, x):
        if any(self.pads):
            x = nn.functional.pad(x, self.pads, self.mode)
        return self.conv(x)


def trimmed_conv_transpose(enc_ct) -> nn.ConvTranspose1d:
    """EncodecConvTranspose1d whose trim is symmetric, as one ConvTranspose1d that trims via its padding."""
    ct = enc_ct.conv
    conv = plain_conv(ct)
    conv.padding = ((ct.kernel_size[0] - ct.stride[0]) // 2,)
    return conv


def _symmetric_trim(enc_ct) -> bool:
    total = enc_ct.conv.kernel_size[0] - enc_ct.conv.stride[0]
    return not enc_ct.causal and total % 2 == 0 and enc_ct.norm_type == "weight_norm"


def export_decoder(codec: nn.Module) -> nn.Module:
    """A copy of EnCodec model `codec` whose decoder is rewritten as above (the original is untouched)."""
    from transformers.models.encodec import modeling_encodec as hf

    codec = copy.deepcopy(codec).eval()  # parametrized modules share their class: never un-parametrize in place
    min_len = MIN_FRAMES  # shortest input a layer sees: the runtime's minimum frames, times the upsampling so far

    def rewrite(parent: nn.Module) -> None:
        nonlocal min_len
        for name, child in parent.named_children():
            new = None
            if isinstance(child, hf.EncodecConvTranspose1d):
                new = trimmed_conv_transpose(child) if _symmetric_trim(child) else None
                min_len *= child.conv.stride[0]
            elif isinstance(child, hf.EncodecConv1d) and child.conv.stride[0] == 1 and child.norm_type == "weight_norm":
                new = StaticPadConv(child)
                new = new if new.max_pad < min_len else None
            if new is not None:
                setattr(parent, name, new)
            elif isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)):  # the convolutions left as they were
                setattr(parent, name, plain_conv(child))
            else:
                rewrite(child)

    rewrite(codec.decoder)
    return codec


def _frames_reached(layers: nn.Module, in_channels: int, per_frame: int, span: int = 32) -> int:
    """How many frames either side of an input frame change `layers`' output: perturb the middle frame of
    a random input and see which output frames move. Convolutions are local and ELU pointwise, so frames
    out of reach come out bit for bit the same (one call computes every position alike)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_channels, 2 * span + 1, generator=g)
    moved = x.clone()
    moved[:, :, span] += 1.0
    with torch.no_grad():
        diff = (layers(moved) - layers(x)).abs().sum(dim=(0, 1))
    hit = torch.nonzero(diff > 0).flatten() // per_frame
    if hit.numel() == 0 or hit.min() == 0 or hit.max() == 2 * span:
        raise ValueError(f"the codec's receptive field is not within {span} frames")
    return int(max(span - hit.min(), hit.max() - span))


def reach(codec: nn.Module) -> dict:
    """The EnCodec decoder's context, in frames (codec.Reach): "codes", how far the first convolution looks
    each side of a frame (the LSTM after it only looks back); "hidden", how far the upsampling stack after
    the LSTM looks each side of an output frame. Measured on the rewritten decoder the export runs."""
    layers = export_decoder(codec).decoder.layers
    first = layers[0]
    return {
        "codes": _frames_reached(first, first.conv.in_channels, 1),
        "hidden": _frames_reached(nn.Sequential(*layers[2:]), first.conv.out_channels, codec.config.hop_length),
    }
