"""Helpers the Triton python models share: reading inputs, choosing the device, error responses.

`pb_utils` (triton_python_backend_utils) exists only inside Triton, so it is passed in.
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import numpy as np

from .validation import ValidationError

log = logging.getLogger("musicgen")

class BlsError(RuntimeError):
    """A model this one called (BLS) answered with an error; its message is passed on as is."""


PARAM_NAMES = ("top_k", "top_p", "temperature", "guidance_scale", "seed")
MELODY_NAMES = ("melody", "melody_sample_rate")
AUDIO_PROMPT_NAMES = ("audio_prompt", "audio_prompt_sample_rate")  # continuation (audio_prompt.py)


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
    """A response carrying a clear error; unexpected exceptions are logged with their traceback."""
    if isinstance(exc, ValidationError):
        msg = f"invalid request: {exc}"
    elif isinstance(exc, BlsError):
        msg = str(exc)
    else:
        log.error("internal error: %s", "".join(traceback.format_exception(exc)))
        msg = f"{type(exc).__name__}: {exc}"
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(msg))



def output(pb_utils, response, name: str) -> np.ndarray:
    t = pb_utils.get_output_tensor_by_name(response, name)
    if t is None:
        raise RuntimeError(f"response lacks output '{name}'")
    return t.as_numpy()
