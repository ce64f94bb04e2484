"""Resolve a checkpoint source (local HF dir, hub id, built-in preset) and load it.

Every source ends as a local directory in the HuggingFace layout, loaded by `load()`: presets
are saved with `save_pretrained` first, so they take exactly the path a real download takes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import presets

SUPPORTED_MODEL_TYPES = {"musicgen", "musicgen_melody"}
DEFAULT_CACHE = Path(__file__).resolve().parent.parent / "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint source that cannot be used, with a message that says what to do."""


@dataclass(frozen=True)
class Resolved:
    source: str  # what the user passed
    kind: str  # "preset" | "directory" | "hub"
    path: Path  # local directory in HF layout
    random_weights: bool


def resolve(source: str, cache_dir: Path | None = None, hub_timeout: float = 20.0) -> Resolved:
    cache_dir = Path(cache_dir or os.environ.get("MUSICGEN_CHECKPOINT_CACHE", DEFAULT_CACHE))
    if source in presets.PRESETS:
        path = cache_dir / source
        if not (path / presets.RANDOM_MARKER).exists():
            presets.build(source, path)
        _check_dir(path)
        return Resolved(source, "preset", path, True)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{source}: not a directory. Pass a HuggingFace MusicGen checkpoint "
                "directory (config.json + weights), a hub id, or a preset "
                f"({', '.join(sorted(presets.PRESETS))})."
            )
        _check_dir(path)
        return Resolved(source, "directory", path.resolve(), (path / presets.RANDOM_MARKER).exists())
    if source.count("/") != 1 or source.startswith((".", "/")):
        raise CheckpointError(
            f"{source}: no such directory, and not a hub id of the form 'owner/name'. "
            f"Presets: {', '.join(sorted(presets.PRESETS))}."
        )
    return Resolved(source, "hub", _download(source, cache_dir, hub_timeout), False)


def _download(repo_id: str, cache_dir: Path, timeout: float) -> Path:
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout)))
    try:
        from huggingface_hub import snapshot_download

        path = Path(
            snapshot_download(
                repo_id,
                cache_dir=str(cache_dir / "hub"),
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"],
            )
        )
    except Exception as exc:  # offline, unknown id, auth: all end the same way for the user
        raise CheckpointError(
            f"could not fetch {repo_id!r} from the model hub ({type(exc).__name__}: {str(exc)[:300]}). "
            "If this machine is offline, download the checkpoint elsewhere and pass its local directory "
            "(--checkpoint /path/to/musicgen-small), or use a built-in preset "
            f"({', '.join(sorted(presets.PRESETS))}) whose weights are random."
        ) from None
    _check_dir(path)
    return path


def _check_dir(path: Path) -> None:
    cfg = path / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"{path}: no config.json; not a HuggingFace checkpoint directory")
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg}: unreadable config ({exc})") from None
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not a MusicGen checkpoint "
            f"(expected one of {sorted(SUPPORTED_MODEL_TYPES)})"
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise CheckpointError(f"{path}: no weights (*.safetensors or *.bin)")


def load(path: Path):
    """(model, tokenizer) from a local HF directory, in eval mode, fp32, eager attention.

    Eager attention: SDPA returns NaN for the guidance rows whose text mask is all zeros.
    """
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    cls = MusicgenForConditionalGeneration
    if json.loads((Path(path) / "config.json").read_text()).get("model_type") == "musicgen_melody":
        from transformers import MusicgenMelodyForConditionalGeneration as cls  # exported by export/onnx_export.py
    model = cls.from_pretrained(path, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer
