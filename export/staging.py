"""The staging stage: graphs + tokenizer + manifest moved into the Triton model repository's model dirs.

A variant (export/variants.py) says which graphs lm_engine receives and what its manifest adds; the
rest of the layout is the same for every variant. Exports are written into a staging folder inside
the repository first, so a killed export never leaves a half-written model dir.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from musicgen_runtime import manifest as manifest_mod, names
from musicgen_runtime.processes import pid_alive

from . import checkpoints
from .onnx_export import OPSET

log = logging.getLogger(__name__)
STAGING_PREFIX = ".export-"  # + the exporting process's pid: a staging folder inside the repository


def model_files(lm_files) -> dict[str, list[str]]:
    """Which files each Triton model directory receives; lm_engine's graphs are the variant's."""
    return {
        "tokenizer": [names.TOKENIZER_FILE],
        "text_encoder": [names.TEXT_ENCODER_FILE],
        "lm_engine": list(lm_files),
        "audio_decoder": [names.AUDIO_DECODER_FILE],
        "musicgen_info": [],  # manifest only
        "musicgen_stream": [],
    }


def model_dims(model, tokenizer) -> manifest_mod.Dims:
    c = model.config
    dec, codec = c.decoder, c.audio_encoder
    return manifest_mod.Dims(
        num_codebooks=dec.num_codebooks,
        vocab_size=dec.vocab_size,
        pad_token_id=int(dec.pad_token_id),
        hidden_size=dec.hidden_size,
        num_layers=dec.num_hidden_layers,
        num_heads=dec.num_attention_heads,
        head_dim=dec.hidden_size // dec.num_attention_heads,
        max_positions=dec.max_position_embeddings,
        audio_channels=dec.audio_channels,
        sample_rate=codec.sampling_rate,
        frame_rate=float(codec.frame_rate),
        hop_length=int(codec.hop_length),
        text_hidden_size=c.text_encoder.hidden_size,
        max_text_tokens=min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512),
    )


def exporter_digest() -> str:
    """Hash of the exporter's and runtime's code, our CPU kernels' included (they define how an int8 export's
    weights are packed): a staged export made by other code is not current."""
    import hashlib

    runtime = Path(manifest_mod.__file__).parent
    h = hashlib.sha256()
    for pkg, patterns in (
        (Path(__file__).parent, ("*.py",)),
        (runtime, ("*.py",)),
        (runtime / "cpu_kernels", ("*.py", "*.c", "*.h")),
    ):
        for f in sorted(f for pattern in patterns for f in pkg.glob(pattern)):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def save_tokenizer(tokenizer, path: Path) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise checkpoints.CheckpointError("the checkpoint's tokenizer has no fast (tokenizers) version")
    backend.save(str(path))


def remove_abandoned_staging(repository: Path) -> list[Path]:
    """Delete staging folders left by exports that were killed (their process is gone): Triton reads
    every folder of a repository as a model and refuses to start with one of them in it."""
    removed = []
    for d in Path(repository).glob(STAGING_PREFIX + "*"):
        pid = d.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if d.is_dir() and not (pid.isdigit() and pid_alive(int(pid))):
            shutil.rmtree(d, ignore_errors=True)
            log.warning("removed %s, left by an export that did not finish", d)
            removed.append(d)
    return removed


def stage(variant, source: str, resolved, model, tokenizer, repository: Path, precision: str, t0: float) -> dict:
    """Export the loaded checkpoint's graphs (`variant.export_graphs`) into a staging folder, then move
    them, the tokenizer and a manifest into the model dirs. Returns the manifest."""
    from .codec_graph import reach

    dims = model_dims(model, tokenizer)
    extra = variant.manifest_extra(model, resolved.path, dims)
    layout = model_files(variant.lm_files)
    with tempfile.TemporaryDirectory(dir=repository, prefix=f"{STAGING_PREFIX}{os.getpid()}-") as tmp:
        tmp = Path(tmp)
        info = variant.export_graphs(model, tmp, precision, extra)
        save_tokenizer(tokenizer, tmp / names.TOKENIZER_FILE)
        files = {}
        for fname in [names.TOKENIZER_FILE, *info]:
            for f in sorted(tmp.glob(fname + "*")):
                files[f.name] = {"sha256": manifest_mod.sha256(f), "bytes": f.stat().st_size}
        manifest = {
            "format": 1,
            "requested_source": source,
            "source": resolved.source,
            "source_kind": resolved.kind,
            "checkpoint_path": str(resolved.path),
            "random_weights": resolved.random_weights,
            "model_type": model.config.model_type,
            "precision": precision,
            "graphs": info,
            "opset": OPSET,
            "dims": dims.__dict__,
            "codec_reach": reach(model.audio_encoder),
            **extra,
            "generation_defaults": {"top_k": 250, "top_p": 0.0, "temperature": 1.0, "guidance_scale": 3.0},
            "files": files,
            "model_files": layout,
            "versions": _versions(),
            "exporter": exporter_digest(),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "export_seconds": round(time.time() - t0, 1),
        }
        for model_name, fnames in layout.items():
            dst = repository / model_name / "1"
            dst.mkdir(parents=True, exist_ok=True)
            for f in list(dst.glob("*.onnx")) + list(dst.glob("*.onnx.data")):
                if not any(f.name.startswith(n) for n in fnames):  # another architecture's earlier export
                    f.unlink()
            for fname in fnames:
                for f in tmp.glob(fname + "*"):
                    shutil.move(str(f), dst / f.name)
            (dst / names.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    log.info(
        "exported %s (%s, %s) into %s in %.1fs",
        resolved.source,
        model.config.model_type,
        precision,
        repository,
        time.time() - t0,
    )
    return manifest


def current_manifest(repository: Path) -> dict | None:
    """The manifest of the export staged in `repository`, if complete and its files intact (by size)."""
    try:
        m = manifest_mod.read(Path(repository) / "lm_engine" / "1")
    except manifest_mod.ManifestError:
        return None
    layout = m.get("model_files")
    if not isinstance(layout, dict):
        return None
    for model_name, fnames in layout.items():
        for fname, meta in m.get("files", {}).items():
            if any(fname.startswith(n) for n in fnames):
                f = Path(repository) / model_name / "1" / fname
                if not f.exists() or f.stat().st_size != meta["bytes"]:
                    return None
    return m
