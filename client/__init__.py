"""Python client and command line for the MusicGen Triton server (see :mod:`client.api`, :mod:`client.cli`)."""

from .api import (
    GenerationResult,
    HealthReport,
    MusicGenClient,
    StreamEvent,
    parse_server_url,
    parse_url,
)
from .errors import (
    AuthenticationError,
    GenerationError,
    InvalidParameter,
    ModelNotReady,
    MusicGenError,
    RequestTimeout,
    ServerUnavailable,
    TLSError,
    classify,
)

__all__ = [
    "AuthenticationError",
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
    "TLSError",
    "classify",
    "parse_server_url",
    "parse_url",
]
