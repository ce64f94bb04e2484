"""Python client and command line for the MusicGen Triton server (see :mod:`client.api`, :mod:`client.cli`)."""

from .api import (
    GenerationResult,
    HealthReport,
    MusicGenClient,
    StreamEvent,
    parse_url,
)
from .errors import (
    GenerationError,
    InvalidParameter,
    ModelNotReady,
    MusicGenError,
    RequestTimeout,
    ServerUnavailable,
    classify,
)

__all__ = [
    "GenerationError",
    "GenerationResult",
    "HealthReport",
    "InvalidParameter",
    "ModelNotReady",
    "MusicGenClient",
    "MusicGenError",
    "RequestTimeout",
    "ServerUnavailable",
    "StreamEvent",
    "classify",
    "parse_url",
]
