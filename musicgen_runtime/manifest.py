"""The export manifest: what was exported, from where, with which dims and precision."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from . import names


@dataclass(frozen=True)
class Dims:
    num_codebooks: int
    vocab_size: int  # logits per codebook; the pad/BOS id equals vocab_size
    pad_token_id: int
    hidden_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    max_positions: int
    audio_channels: int
    sample_rate: int
    frame_rate: float
    hop_length: int
    text_hidden_size: int
    max_text_tokens: int


class ManifestError(RuntimeError):
    pass


def read(model_dir: str | Path) -> dict:
    path = Path(model_dir) / names.MANIFEST_FILE
    if not path.exists():
        raise ManifestError(f"{path} is missing: run the export (`make export`) to stage the weights")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from None


# manifest keys that hold server filesystem paths: never sent to a client
PRIVATE_KEYS = ("checkpoint_path",)


def public(manifest: dict) -> dict:
    """The manifest as clients see it (musicgen_info): no server paths. A checkpoint given as a local
    directory is named by its last component only."""
    out = {k: v for k, v in manifest.items() if k not in PRIVATE_KEYS}
    for key in ("source", "requested_source"):
        value = out.get(key)
        if isinstance(value, str) and ("/" in value and (value.startswith(("/", ".", "~")) or Path(value).exists())):
            out[key] = Path(value.rstrip("/")).name or value
    return out


def dims(manifest: dict) -> Dims:
    try:
        return Dims(**manifest["dims"])
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"manifest has no valid 'dims' ({exc})") from None


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
