"""Staging a model repository for tests: a copy of model_repository/ with a fresh export in it.

A module of its own (not conftest.py): tests/ and tests/deploy/ each have a conftest, and
`from conftest import ...` would pick whichever pytest imported first.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage_repository(dst: Path, checkpoint: str = "tiny-random", precision: str = "fp32") -> Path:
    """Copy model_repository/ (configs + model.py, no weights) and export `checkpoint` into it."""
    from export.build import build
    from export.repository import copy_model_repository

    build(checkpoint, copy_model_repository(dst), precision)
    return dst


def copy_with_parameters(src: Path, dst: Path, model: str, **params: str) -> Path:
    """A copy of the staged repository `src` at `dst` whose `model` config sets these parameters."""
    import re
    import shutil

    shutil.copytree(src, dst)
    config = dst / model / "config.pbtxt"
    text = config.read_text()
    for key, value in params.items():
        line = f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
        pattern = rf"parameters \{{ key: \"{key}\" value: \{{ string_value: \"[^\"]*\" \}} \}}"
        text, n = re.subn(pattern, line, text)
        if n == 0:
            text += line + "\n"
    config.write_text(text)
    return dst
