"""Shared fixtures: a tiny-random export staged into a temporary copy of the model repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from staging import stage_repository


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    return stage_repository(tmp_path_factory.mktemp("repo") / "model_repository")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_repo) -> Path:
    from export import checkpoints

    return checkpoints.resolve("tiny-random").path


@pytest.fixture(scope="session")
def triton(tiny_repo):
    """A real tritonserver serving the tiny-random repository (free loopback ports)."""
    from server import TritonServer

    with TritonServer(tiny_repo) as srv:
        yield srv


@pytest.fixture(scope="session")
def melody_repo(tmp_path_factory) -> Path:
    return stage_repository(tmp_path_factory.mktemp("melody") / "model_repository", "tiny-random-melody")


@pytest.fixture(scope="session")
def melody_triton(melody_repo):
    """A real tritonserver serving the tiny-random-melody repository."""
    from server import TritonServer

    with TritonServer(melody_repo) as srv:
        yield srv
