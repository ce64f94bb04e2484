"""Helpers the Triton python models share: reading inputs, choosing the device, error responses.

`pb_utils` (triton_python_backend_utils) exists only inside Triton, so it is passed in.
"""

from __future__ import annotations

import json
import logging
import secrets
import traceback
from pathlib import Path

import numpy as np

from .errors import Cancelled, Unavailable
from .validation import ValidationError

log = logging.getLogger("musicgen")


class BlsError(RuntimeError):
    """A model this one called (BLS) answered with an error; its message and code are passed on as is."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


STUB_DEAD = "is not healthy"  # Triton's "Stub process '<instance>' is not healthy."
INVALID_PREFIX, UNAVAILABLE_PREFIX = "invalid request: ", "unavailable: "


def raise_for_error(response) -> None:
    """Raise BlsError (keeping Triton's error code) if a BLS response carries an error."""
    if response.has_error():
        err = response.error()
        raise BlsError(err.message(), err.code())


PARAM_NAMES = ("top_k", "top_p", "temperature", "guidance_scale", "seed")
MELODY_NAMES = ("melody", "melody_sample_rate")
AUDIO_PROMPT_NAMES = ("audio_prompt", "audio_prompt_sample_rate")  # continuation (audio_prompt.py)
# the request's inputs that the front models (musicgen_lm, musicgen_stream) hand to lm_engine as they came
FORWARDED_NAMES = ("duration",) + PARAM_NAMES + MELODY_NAMES + AUDIO_PROMPT_NAMES


def scalar(pb_utils, request, name: str, required: bool = False):
    """The single value of input `name`, or None when an optional input is absent."""
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        if required:
            raise ValidationError(f"input '{name}' is required")
        return None
    arr = t.as_numpy()
    if arr.size != 1:
        raise ValidationError(f"input '{name}' must hold exactly one value, got shape {list(arr.shape)}")
    v = arr.reshape(-1)[0]
    return v.item() if isinstance(v, np.generic) else v


def array(pb_utils, request, name: str) -> np.ndarray:
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        raise ValidationError(f"input '{name}' is required")
    return t.as_numpy()


def model_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def parameters(args: dict) -> dict:
    cfg = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}


def device(args: dict) -> str:
    """'cuda' on a GPU instance (Triton picks KIND_GPU on GPU hosts), else 'cpu'; parameter `device` overrides."""
    choice = parameters(args).get("device", "auto").strip().lower() or "auto"
    if choice in ("cpu", "cuda"):
        return choice
    return "cuda" if args.get("model_instance_kind", "CPU") == "GPU" else "cpu"


def error_response(pb_utils, exc: BaseException):
    """A response carrying `exc` as a coded error: the one place exceptions become client errors.

    ValidationError -> INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT); Unavailable -> UNAVAILABLE
    (503); a BLS callee's error keeps its code and message (a dead callee
    stub is UNAVAILABLE: the supervisor restarts it); anything else -> INTERNAL (500) with a generic
    message and an id, the details (which may name server paths) only in the server log.
    """
    E = pb_utils.TritonError
    if isinstance(exc, ValidationError):
        msg, code = f"{INVALID_PREFIX}{exc}", E.INVALID_ARG
    elif isinstance(exc, Unavailable):
        msg, code = f"{UNAVAILABLE_PREFIX}{exc}", E.UNAVAILABLE
    elif isinstance(exc, Cancelled):  # its client went away: no one reads the code (INTERNAL, as before)
        msg, code = str(exc) or "request cancelled", E.INTERNAL
    elif isinstance(exc, BlsError):
        # Triton 2.51 hands a BLS caller every callee error as INTERNAL: the code is read back from the
        # message prefixes set above (and Triton's own message for a dead stub)
        msg = str(exc)
        if msg.startswith(INVALID_PREFIX):
            code = E.INVALID_ARG
        elif msg.startswith(UNAVAILABLE_PREFIX) or STUB_DEAD in msg:
            code = E.UNAVAILABLE
        else:
            code = E.INTERNAL if exc.code is None else exc.code
    else:
        ref = secrets.token_hex(4)
        log.error("internal error [%s]: %s", ref, "".join(traceback.format_exception(exc)))
        msg, code = f"internal error [{ref}] (details in the server log)", E.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=E(msg, code))


def output(pb_utils, response, name: str) -> np.ndarray:
    t = pb_utils.get_output_tensor_by_name(response, name)
    if t is None:
        raise RuntimeError(f"response lacks output '{name}'")
    return t.as_numpy()
