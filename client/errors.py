"""What can go wrong talking to the MusicGen server, as exception classes with plain messages.

Every error the client raises is a :class:`MusicGenError`; ``classify`` turns tritonclient's
``InferenceServerException`` (and the socket errors the HTTP client raises) into one of them.
"""

from __future__ import annotations

import re
import socket
import ssl


class MusicGenError(Exception):
    """Base class: a failure with a message fit to show to a user."""

    def __init__(self, message: str, *, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail  # the server's raw message, when there was one


class ServerUnavailable(MusicGenError):
    """Nothing answers at the URL (server down, wrong port, connection refused or dropped)."""


class ModelNotReady(MusicGenError):
    """The server answers but the model is missing, still loading, unloaded or its process died."""


class InvalidParameter(MusicGenError, ValueError):
    """A request parameter was refused (by the client's own validation or by the server)."""


class RequestTimeout(MusicGenError, TimeoutError):
    """No answer within the client's timeout."""


class GenerationError(MusicGenError):
    """The server accepted the request and failed while generating."""


class AuthenticationError(MusicGenError):
    """The server (its proxy) refused the API token: missing, wrong or revoked (HTTP 401, gRPC UNAUTHENTICATED)."""


class TLSError(MusicGenError):
    """The TLS connection failed: the server's certificate is not trusted (CA bundle) or names another host."""


_TLS_FAILURE = re.compile(
    r"certificate verify failed|CERTIFICATE_VERIFY_FAILED|ssl handshake failed|"
    r"Handshake failed|wrong version number|WRONG_VERSION_NUMBER|"
    r"hostname mismatch|doesn't match|peer name|SSL routines",
    re.IGNORECASE,
)


def _auth_or_tls(exc: BaseException, raw: str, status: str, where: str) -> MusicGenError | None:
    """AuthenticationError / TLSError for a refused token or a failed TLS handshake, else None."""
    if status in ("401", "StatusCode.UNAUTHENTICATED") or "UNAUTHENTICATED" in status:
        return AuthenticationError(
            f"the server{where} refused the API token (missing, wrong or revoked): "
            "pass --token or set MUSICGEN_API_TOKEN",
            detail=raw,
        )
    if isinstance(exc, ssl.SSLError) or _TLS_FAILURE.search(raw):
        return TLSError(
            f"TLS with the server{where} failed: {_strip(raw).rsplit(': ', 1)[-1] or raw}. "
            "Is the server's CA in --ca-bundle (MUSICGEN_CA_BUNDLE), and does the URL's host "
            "match its certificate? A plain http:// or grpc:// server needs no TLS.",
            detail=raw,
        )
    return None


# what the transport says when the server itself cannot be reached
_NETWORK = re.compile(
    r"failed to connect|connection refused|connect failed|socket closed|connection reset|connection closed|"
    r"name resolution|dns resolution|broken pipe|unreachable|Connection aborted|"
    r"server not (live|ready)|ssl handshake|stream removed",
    re.IGNORECASE,
)

# Triton / python-backend messages -> class. Checked in order; the first match wins.
_PATTERNS: list[tuple[type[MusicGenError], re.Pattern]] = [
    (
        InvalidParameter,
        re.compile(
            r"invalid request|unexpected datatype|unexpected shape|unexpected inference input|"
            r"expected \d+ inputs? but got|missing (required )?input|invalid argument|"
            r"must be (in|an?|non|finite|text|UTF)|unable to parse|failed to parse|"
            r"is not valid for|expecting .* to be|unexpected number of|input byte size",
            re.IGNORECASE,
        ),
    ),
    (
        ModelNotReady,
        re.compile(
            r"unknown model|is not found|not ready|is not healthy|stub process|unavailable model|"
            r"has no available versions|no version is available|model .* is not loaded|"
            r"failed to load|unloading|is being unloaded",
            re.IGNORECASE,
        ),
    ),
    (RequestTimeout, re.compile(r"deadline exceeded|timed out|timeout", re.IGNORECASE)),
    (ServerUnavailable, _NETWORK),
]
# A load balancer's own answer when the replica serving the request died or none is ready.
_GATEWAY = re.compile(r"\b(502 Bad Gateway|503 Service Unavailable|504 Gateway Time-?out)\b", re.IGNORECASE)


def _strip(message: str) -> str:
    """Drop Triton's wrappers ("in ensemble 'musicgen', ...", "[StatusCode.X] ...") for display."""
    msg = re.sub(r"^\[StatusCode\.\w+\]\s*", "", message.strip())
    msg = re.sub(r"^in ensemble '[^']*',\s*", "", msg)
    msg = re.sub(r"^(invalid request|unavailable):\s*", "", msg)
    return msg


def classify(exc: BaseException, *, url: str = "", model: str = "", timeout: float | None = None) -> MusicGenError:
    """The MusicGenError that says what `exc` (from tritonclient or the network) means."""
    if isinstance(exc, MusicGenError):
        return exc
    where = f" at {url}" if url else ""
    if isinstance(exc, ssl.SSLError):  # an OSError: before the network branch below
        return _auth_or_tls(exc, str(exc), "", where)
    # network-level errors of the HTTP client (geventhttpclient raises plain socket errors)
    if isinstance(exc, (socket.timeout, TimeoutError)) or type(exc).__name__ == "Timeout":
        return RequestTimeout(
            f"no answer from the server{where} within {timeout:g} s"
            if timeout
            else f"the request to the server{where} timed out",
            detail=str(exc),
        )
    if isinstance(exc, (ConnectionError, socket.gaierror)) or (
        isinstance(exc, OSError) and not hasattr(exc, "message")
    ):
        return ServerUnavailable(
            f"cannot reach the MusicGen server{where}: {exc.strerror or exc}. "
            "Is it running (`make serve`) and is the URL right?",
            detail=str(exc),
        )
    raw = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    raw = raw or str(exc)
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    status = str(status or "")
    text = f"{status} {raw}"
    refused = _auth_or_tls(exc, raw, status, where)
    if refused is not None:
        return refused
    # the server's own verdict first: its models answer input errors with 400 / INVALID_ARGUMENT and a
    # model that cannot serve now (engine restarting or stalled) with 503 / UNAVAILABLE
    if status in ("400", "StatusCode.INVALID_ARGUMENT"):
        return InvalidParameter(f"invalid parameter: {_strip(raw)}", detail=raw)
    if status == "503" or ("UNAVAILABLE" in status and not _NETWORK.search(raw)):
        name = f" '{model}'" if model else ""
        return ModelNotReady(f"model{name} is not ready on the server{where}: {_strip(raw)}", detail=raw)
    if "UNAVAILABLE" in status and "model" not in raw.lower():
        reason = _strip(raw).rsplit(": ", 1)[-1]  # grpc: "failed to connect ...; last error: ...: Connection refused"
        return ServerUnavailable(
            f"cannot reach the MusicGen server{where} ({reason}). Is it running (`make serve`) and is the URL right?",
            detail=raw,
        )
    gateway = _GATEWAY.search(text)
    if gateway:
        return ServerUnavailable(
            f"the load balancer in front of the MusicGen server{where} answered "
            f"{gateway.group(1)}: the replica serving the request went away or none is "
            "ready. Send the request again.",
            detail=raw,
        )
    if "DEADLINE_EXCEEDED" in status:
        return RequestTimeout(
            f"no answer from the server{where} within {timeout:g} s"
            if timeout
            else f"the request to the server{where} timed out",
            detail=raw,
        )
    for cls, pat in _PATTERNS:
        if pat.search(text):
            if cls is InvalidParameter:
                return InvalidParameter(f"invalid parameter: {_strip(raw)}", detail=raw)
            if cls is ModelNotReady:
                name = f" '{model}'" if model else ""
                return ModelNotReady(f"model{name} is not ready on the server{where}: {_strip(raw)}", detail=raw)
            if cls is RequestTimeout:
                return RequestTimeout(f"the request to the server{where} timed out: {_strip(raw)}", detail=raw)
            return ServerUnavailable(
                f"cannot reach the MusicGen server{where}: {_strip(raw).rstrip('.')}. "
                "Is it running (`make serve`) and is the URL right?",
                detail=raw,
            )
    if status in ("400", "StatusCode.INVALID_ARGUMENT"):
        return InvalidParameter(f"invalid parameter: {_strip(raw)}", detail=raw)
    return GenerationError(f"generation failed: {_strip(raw)}", detail=raw)
