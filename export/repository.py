"""The model repository's layout, without torch: copying its configs and code for a staged export."""

from __future__ import annotations

import shutil
from pathlib import Path

from musicgen_runtime import names

SOURCE_REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"


def copy_model_repository(dst: Path, src: Path = SOURCE_REPOSITORY) -> Path:
    """Copy the repository's configs and model code (never staged weights) to `dst`, refreshing them."""
    ignore = shutil.ignore_patterns(
        "*.onnx", "*.onnx.data", "*.data", names.MANIFEST_FILE, names.TOKENIZER_FILE, "__pycache__", ".export-*"
    )
    shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True)
    return Path(dst)
