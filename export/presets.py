"""Built-in random-weight checkpoints, made offline and saved in the HuggingFace layout.

A preset is written to disk with `save_pretrained` (weights + config + tokenizer) and then
loaded back through exactly the path a downloaded checkpoint takes (`checkpoints.load`).
Weights are random (seeded, deterministic): the audio they make is noise, and the manifest
says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Music descriptions used to train the presets' tokenizer offline (real checkpoints bring their own).
_CORPUS = [
    "lofi hip hop beat with mellow piano and vinyl crackle",
    "80s pop track with bassy drums and synth",
    "90s rock song with loud guitars and heavy drums",
    "a light and cheerly EDM track, with syncopated drums, aery pads, and strong emotions",
    "a grand orchestral arrangement with thunderous percussion, epic brass fanfares, and soaring strings",
    "ambient electronic music with slow evolving pads and soft textures",
    "upbeat acoustic folk song with guitar, banjo and handclaps",
    "jazz trio with walking upright bass, brushed drums and piano improvisation",
    "reggae groove with offbeat guitar skanks and deep bass",
    "cinematic trailer music with tense strings and booming drums",
    "classical piano sonata in a minor key, slow and melancholic",
    "funky disco track with slap bass, horns and four on the floor kick",
    "chill bossa nova with nylon guitar and gentle percussion",
    "dark techno with pounding kick, acid bassline and metallic hi hats",
    "happy ukulele tune for a children's video",
    "epic metal riff with double bass drums and distorted guitars",
    "soulful r&b ballad with electric piano and smooth vocals",
    "traditional irish jig with fiddle, tin whistle and bodhran",
    "a calm meditation soundscape with singing bowls and flute",
    "latin salsa with congas, timbales, piano montuno and brass",
    "drum and bass with fast breakbeats and rolling sub bass",
    "country song with pedal steel, twangy guitar and a steady shuffle",
    "video game chiptune music, 8-bit melody, fast tempo",
    "blues shuffle in e with harmonica and overdriven guitar",
    "trap beat with 808 bass, rapid hi hats and dark synth melody",
    "string quartet playing a romantic waltz",
    "indie rock with jangly guitars, tambourine and a catchy hook",
    "bollywood dance track with tabla, sitar and electronic beats",
    "a sad violin solo over a soft piano accompaniment",
    "energetic workout music with driving synth bass, 128 bpm",
    "medieval folk music with lute, recorder and hand drum",
    "smooth jazz saxophone over a laid back groove",
    "gospel choir with hammond organ and clapping",
    "minimal piano loop, relaxing, study music",
    "afrobeat with polyrhythmic percussion, horns and guitar",
    "synthwave with retro arpeggios, gated reverb drums and neon atmosphere",
]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    t5: dict
    encodec: dict
    decoder: dict
    seed: int = 1234
    tokenizer_vocab: int = 400
    model_type: str = "musicgen"  # or "musicgen_melody" (conditioning prepended, no cross-attention)
    melody: dict | None = None  # MusicgenMelodyConfig extras (num_chroma, chroma_length)


_TINY = Preset(
    name="tiny-random",
    description="tiny random-weight MusicGen for tests and CI (seconds to build and export)",
    t5=dict(
        vocab_size=400,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
    ),
    encodec=dict(
        sampling_rate=32000,
        hidden_size=16,
        num_filters=4,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=64,
        target_bandwidths=[1.2],
        num_lstm_layers=1,
        use_causal_conv=False,
        norm_type="weight_norm",
        normalize=False,
    ),
    decoder=dict(
        vocab_size=64,
        hidden_size=32,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_codebooks=4,
        max_position_embeddings=2048,
        pad_token_id=64,
        bos_token_id=64,
    ),
)

# Exactly musicgen-small's shapes (T5-base, LM 1024/24/16, 4 x 2048 codebooks, EnCodec 32 kHz).
_SMALL = Preset(
    name="small-random",
    description="random weights with exactly facebook/musicgen-small's shapes, for benchmarks",
    t5=dict(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=12,
        num_heads=12,
        relative_attention_num_buckets=32,
        feed_forward_proj="relu",
    ),
    encodec=dict(
        sampling_rate=32000,
        hidden_size=128,
        num_filters=64,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=2048,
        target_bandwidths=[2.2],
        num_lstm_layers=2,
        use_causal_conv=False,
        norm_type="weight_norm",
        normalize=False,
    ),
    decoder=dict(
        vocab_size=2048,
        hidden_size=1024,
        ffn_dim=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_codebooks=4,
        max_position_embeddings=2048,
        pad_token_id=2048,
        bos_token_id=2048,
    ),
    tokenizer_vocab=400,
)

# tiny-random's shapes as a MusicGen-Melody (text + 12-bin chroma prepended to the decoder input);
# a short chroma window (40 frames, 5 s) so tests see both the tiling and the truncation of melodies.
# Decoder weights drawn 10x wider than the default (std 0.2): at 0.02 the sinusoidal positions drown
# the conditioning and every melody gives the same greedy codes, so a test could not see the melody.
_TINY_MELODY = Preset(
    name="tiny-random-melody",
    description="tiny random-weight MusicGen-Melody for tests and CI",
    t5=dict(_TINY.t5, d_model=48),  # != decoder width, so the text projection (enc_to_dec_proj) exists
    encodec=_TINY.encodec,
    decoder=dict(_TINY.decoder, initializer_factor=0.2),
    model_type="musicgen_melody",
    melody=dict(num_chroma=12, chroma_length=40),
)

# tiny-random's shapes as a stereo MusicGen: 8 codebooks interleaved [1L,1R,2L,2R,...], a mono EnCodec that
# encodes and decodes each channel on its own (as facebook/musicgen-stereo-*).
_TINY_STEREO = Preset(
    name="tiny-random-stereo",
    description="tiny random-weight stereo MusicGen for tests and CI",
    t5=_TINY.t5,
    encodec=_TINY.encodec,
    decoder=dict(_TINY.decoder, num_codebooks=8, audio_channels=2),
)

PRESETS = {p.name: p for p in (_TINY, _SMALL, _TINY_MELODY, _TINY_STEREO)}
RANDOM_MARKER = "musicgen_triton_preset.json"  # written into a preset dir: records it is random


def train_tokenizer(vocab_size: int):
    """A T5-style tokenizer (Unigram + Metaspace, </s> appended) built from the built-in corpus.

    The vocabulary is computed here, deterministically (the `tokenizers` Unigram trainer is not):
    the corpus' words with log-frequency scores, then single characters so any text encodes.
    """
    import math
    import string
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    words = Counter(w for line in _CORPUS for w in line.lower().split())
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    total = sum(words.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    budget = vocab_size - len(vocab) - 2 * len(chars)
    for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[: max(budget, 0)]:
        vocab.append(("\u2581" + w, math.log(n / total)))
    floor = math.log(1 / (10 * total))
    vocab += [("\u2581" + c, floor - 1) for c in chars] + [(c, floor - 2) for c in chars] + [("\u2581", floor - 3)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return tok


def build(name: str, out_dir: Path) -> Path:
    """Build preset `name` into `out_dir` (HF layout). Deterministic for a given preset."""
    import torch
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        PreTrainedTokenizerFast,
        T5Config,
    )

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    p = PRESETS[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(p.seed)

    tok = train_tokenizer(p.tokenizer_vocab)
    t5 = T5Config(**p.t5, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    if tok.get_vocab_size() > t5.vocab_size:
        raise RuntimeError("preset tokenizer is larger than the text encoder's vocabulary")
    if p.model_type == "musicgen_melody":
        from transformers import (
            MusicgenMelodyConfig,
            MusicgenMelodyDecoderConfig,
            MusicgenMelodyForConditionalGeneration,
        )

        config = MusicgenMelodyConfig(
            text_encoder=t5,
            audio_encoder=EncodecConfig(**p.encodec),
            decoder=MusicgenMelodyDecoderConfig(**p.decoder),
            **(p.melody or {}),
        )
        model = MusicgenMelodyForConditionalGeneration(config).eval()
    else:
        config = MusicgenConfig(
            text_encoder=t5, audio_encoder=EncodecConfig(**p.encodec), decoder=MusicgenDecoderConfig(**p.decoder)
        )
        # Building from config (not from sub-model instances) keeps the decoder's causal mask.
        model = MusicgenForConditionalGeneration(config).eval()
    _fill_codebooks(model, torch)
    gen = model.generation_config
    gen.decoder_start_token_id = p.decoder["bos_token_id"]
    gen.pad_token_id = p.decoder["pad_token_id"]
    gen.bos_token_id = p.decoder["bos_token_id"]
    gen.do_sample, gen.guidance_scale, gen.top_k, gen.max_length = True, 3.0, 250, 1500
    model.save_pretrained(out_dir)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    fast.save_pretrained(out_dir)
    (out_dir / RANDOM_MARKER).write_text(json.dumps({"preset": name, "seed": p.seed, "random_weights": True}))
    log.info("built preset %s in %s", name, out_dir)
    return out_dir


def _fill_codebooks(model, torch) -> None:
    """Random-init EnCodec codebooks are all zeros (buffers): fill them, or every code decodes alike."""
    gen = torch.Generator().manual_seed(4321)
    for layer in model.audio_encoder.quantizer.layers:
        cb = layer.codebook
        cb.embed.copy_(torch.randn(cb.embed.shape, generator=gen))
        cb.embed_avg.copy_(cb.embed)
        cb.cluster_size.fill_(1.0)
        if hasattr(cb, "inited"):
            cb.inited.fill_(True)
