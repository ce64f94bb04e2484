"""Staging a model repository for tests: a copy of model_repository/ with a fresh export in it.

A module of its own (not conftest.py): tests/ and tests/deploy/ each have a conftest, and
`from conftest import ...` would pick whichever pytest imported first.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage_repository(dst: Path, checkpoint: str = "tiny-random", precision: str = "fp32") -> Path:
    """Copy model_repository/ (configs + model.py, no weights) and export `checkpoint` into it."""
    from export.onnx_export import build
    from export.repository import copy_model_repository

    build(checkpoint, copy_model_repository(dst), precision)
    _link_this_checkout(dst)
    return dst


def _link_this_checkout(repo: Path) -> None:
    """Make the models import THIS checkout's musicgen_runtime.

    Triton's python stubs run an isolated interpreter (PYTHONPATH is ignored), so they import
    musicgen_runtime from the venv's install, which for a git worktree sharing a venv is another
    checkout. The stub puts each model's version dir first on sys.path: a link there wins.
    """
    for model_py in repo.glob("*/[0-9]*/model.py"):
        link = model_py.parent / "musicgen_runtime"
        if not link.exists():
            link.symlink_to(ROOT / "musicgen_runtime", target_is_directory=True)
