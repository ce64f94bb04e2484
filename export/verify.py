"""`python -m export verify`: proof that the staged graphs compute what the PyTorch model computes.

Per graph: max abs / relative error of ONNX Runtime against the HF model, at shapes different from
the export example (the variant's parity checks, export/step_parity.py); the audio prompt encoder's
codes against EnCodec's (export/parity.py encoder_parity). Causality of the step
graph. The variant's greedy oracle (export/oracle.py): generation through the runtime compared token
for token with `transformers` `generate(do_sample=False)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicgen_runtime import codec, manifest as manifest_mod, names, text
from musicgen_runtime.audio_prompt import AudioPromptEncoder
from musicgen_runtime.variants import open_language_model

from . import checkpoints
from .oracle import greedy_oracle
from .parity import (
    FP32_TOL,
    REDUCED_TOL,
    codec_chunked_parity,
    codec_parity,
    encoder_parity,
    reduced_graphs_ok,
    text_encoder_parity,
)
from .variants import variant_for


def verify(repository: Path, checkpoint: str | None = None, steps: int = 64) -> dict:
    repository = Path(repository)
    lm_dir = repository / "lm_engine" / "1"
    man = manifest_mod.read(lm_dir)
    variant = variant_for(man.get("model_type", "musicgen"))
    lm = open_language_model(lm_dir)
    dims = lm.dims
    resolved = checkpoints.resolve(checkpoint or man["checkpoint_path"])
    model, tokenizer = checkpoints.load(resolved.path)
    if model.config.model_type != variant.model_type:
        raise checkpoints.CheckpointError(
            f"{resolved.source} is a {model.config.model_type!r} checkpoint; "
            f"the staged export is {variant.model_type!r}"
        )
    precision = man["precision"]
    report = {
        "checkpoint": resolved.source,
        "model_type": variant.model_type,
        "precision": precision,
        "graphs": {},
        "checks": {},
    }
    rng = np.random.default_rng(0)

    enc = text.TextEncoder(repository / "text_encoder" / "1" / names.TEXT_ENCODER_FILE)
    report["graphs"]["text_encoder"] = text_encoder_parity(model, enc, rng)
    variant.step_checks(model, lm, rng, report, precision)
    dec = codec.AudioDecoder.from_directory(repository / "audio_decoder" / "1")
    report["graphs"]["audio_decoder"] = codec_parity(model, dec, dims, rng)
    report["graphs"]["audio_decoder_chunked"] = codec_chunked_parity(model, dec, dims, rng)
    prompt_encoder = None
    if (lm_dir / names.AUDIO_ENCODER_FILE).exists():  # continuation: codes, compared exactly
        prompt_encoder = AudioPromptEncoder(lm_dir / names.AUDIO_ENCODER_FILE, dims)
        report["codes"] = {"audio_encoder": encoder_parity(model, prompt_encoder, dims)}

    tok = text.PromptTokenizer(repository / "tokenizer" / "1" / names.TOKENIZER_FILE, dims.max_text_tokens)
    oracle = greedy_oracle(variant.oracle(lm), lm, tok, enc, dec, model, tokenizer, steps, prompt_encoder)
    report["checks"].update(oracle.pop("checks"))
    report["greedy_oracle"] = oracle

    if precision == "fp32":
        graph_ok = all(g["max_abs"] < FP32_TOL for g in report["graphs"].values())
        oracle_ok = all(o["identical"] for o in oracle["runs"])
    else:  # reduced precision: bounded logits error; tokens reported, not required equal
        graph_ok = reduced_graphs_ok(report, REDUCED_TOL[precision])
        oracle_ok = True
    report["tolerance"] = FP32_TOL if precision == "fp32" else REDUCED_TOL[precision]
    codes_ok = all(c["passed"] for c in report.get("codes", {}).values())
    report["passed"] = bool(graph_ok and codes_ok and oracle_ok and report["checks"]["causal"])
    return report
