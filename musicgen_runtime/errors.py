"""Failure kinds the serving code tells apart, so each reaches the client with the right status.

`validation.ValidationError` is the third kind (the request's fault: HTTP 400 / INVALID_ARGUMENT).
"""


class Unavailable(RuntimeError):
    """The service cannot take this request now (engine stalled or restarting, overloaded): 503 / UNAVAILABLE.
    The message is shown to the client as is."""


class Cancelled(RuntimeError):
    """The client cancelled the request (or went away)."""
