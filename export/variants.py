"""The model variants the exporter knows, as data: which graphs lm_engine receives and how they are
exported, what the manifest adds, which parity checks prove the graphs, which greedy oracle proves the loop.

Adding a variant (e.g. stereo, audio-prompt continuation) means adding an entry here with its graph
export and checks; staging (export/staging.py) and verification (export/verify.py) are shared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from musicgen_runtime import melody_lm, names, text_lm

from . import oracle, step_parity
from .onnx_export import export_melody_graphs, export_text_graphs


@dataclass(frozen=True)
class ExportVariant:
    model_type: str  # the HF config's model_type
    lm_files: tuple[str, ...]  # the graphs lm_engine/1 receives
    export_graphs: Callable  # (model, out_dir, precision, manifest_extra) -> {file: graph info}
    manifest_extra: Callable  # (model, checkpoint_path, dims) -> sections the manifest adds
    step_checks: Callable  # (model, lm, rng, report, precision): parity of the LM graphs
    oracle: Callable  # (lm) -> oracle.Oracle: the greedy oracle's runs


FE_DEFAULTS = {"n_fft": 16384, "hop_length": 4096, "chunk_length": 30}  # MusicgenMelodyFeatureExtractor


def melody_manifest(model, checkpoint_path: Path | None, dims) -> dict:
    """The manifest's "melody" section: chroma window, position table, the feature extractor's settings."""
    c = model.config
    fe = dict(FE_DEFAULTS, sample_rate=int(c.audio_encoder.sampling_rate), num_chroma=int(c.num_chroma))
    pre = Path(checkpoint_path) / "preprocessor_config.json" if checkpoint_path else None
    if pre is not None and pre.exists():
        cfg = json.loads(pre.read_text())
        fe.update({k: cfg[k] for k in ("n_fft", "hop_length", "chunk_length") if k in cfg})
        fe["sample_rate"] = int(cfg.get("sampling_rate", fe["sample_rate"]))
        fe["num_chroma"] = int(cfg.get("num_chroma", cfg.get("feature_size", fe["num_chroma"])))
    if fe["sample_rate"] != int(c.audio_encoder.sampling_rate) or fe["num_chroma"] != int(c.num_chroma):
        raise ValueError(
            f"feature extractor ({fe}) does not match the model (codec rate "
            f"{c.audio_encoder.sampling_rate}, num_chroma {c.num_chroma})"
        )
    return {
        "melody": {
            "num_chroma": int(c.num_chroma),
            "chroma_length": int(c.chroma_length),
            # the decoder's positions cover the longest prefix plus the model's own position limit
            "position_table": int(c.decoder.max_position_embeddings) + int(c.chroma_length) + int(dims.max_text_tokens),
            "feature_extractor": fe,
            "source_separation": False,  # chroma of the full mix (the reference removes drums/bass first)
        }
    }


TEXT = ExportVariant(
    model_type=text_lm.MODEL_TYPE,
    lm_files=(
        names.CROSS_KV_FILE,
        names.DECODER_STEP_FILE,
        names.DECODER_STEP_BLOCKWISE_INT8_FILE,
        names.AUDIO_ENCODER_FILE,
    ),  # + the prompt encoder: lm_engine encodes audio prompts in process
    export_graphs=lambda model, out, precision, extra: export_text_graphs(model, out, precision),
    manifest_extra=lambda model, checkpoint_path, dims: {},
    step_checks=step_parity.cross_attention_checks,
    oracle=oracle.text_oracle,
)

# conditioning prepended to the decoder input, no cross-attention (musicgen_runtime/melody_lm.py)
MELODY = ExportVariant(
    model_type=melody_lm.MODEL_TYPE,
    lm_files=(melody_lm.CONDITION_FILE, melody_lm.DECODER_STEP_FILE, melody_lm.DECODER_STEP_BLOCKWISE_INT8_FILE),
    export_graphs=lambda model, out, precision, extra: export_melody_graphs(
        model, out, precision, extra["melody"]["position_table"]
    ),
    manifest_extra=melody_manifest,
    step_checks=step_parity.prefix_checks,
    oracle=oracle.melody_oracle,
)

VARIANTS = {v.model_type: v for v in (TEXT, MELODY)}


def variant_for(model_type: str) -> ExportVariant:
    try:
        return VARIANTS[model_type]
    except KeyError:
        raise ValueError(f"no export for model_type {model_type!r} (known: {', '.join(sorted(VARIANTS))})") from None
