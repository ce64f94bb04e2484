"""Request parameters, their defaults (the reference implementation's) and their validation.

Used by the server (authoritative) and by the client and UI (early, friendlier errors).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass

DEFAULT_TOP_K = 250
DEFAULT_TOP_P = 0.0
DEFAULT_TEMPERATURE = 1.0
DEFAULT_GUIDANCE = 3.0
DEFAULT_WINDOW_SECONDS = 30.0  # lm_engine parameter `window_seconds`: audiocraft's max_duration, one LM window
DEFAULT_MAX_DURATION = 120.0  # lm_engine parameter `max_duration`: clips beyond a window are long form
MAX_PROMPT_CHARS = 2000
MAX_TOP_K = 1_000_000
MAX_TEMPERATURE = 100.0
MAX_GUIDANCE = 100.0


class ValidationError(ValueError):
    """A request parameter the service refuses; the message is shown to the user as is."""


@dataclass(frozen=True)
class GenerationParams:
    duration: float
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    temperature: float = DEFAULT_TEMPERATURE
    guidance_scale: float = DEFAULT_GUIDANCE
    seed: int | None = None

    def with_seed(self) -> "GenerationParams":
        """A copy whose seed is fixed (drawn now when absent), so the result can be reproduced."""
        if self.seed is not None:
            return self
        return GenerationParams(**{**asdict(self), "seed": secrets.randbits(63)})


def _finite(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValidationError(f"{name} must be a finite number, got {value!r}")
    return v


def _integer(name: str, value) -> int:
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValidationError(f"{name} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be an integer, got {value!r}") from None


def validate_prompt(prompt, max_chars: int = MAX_PROMPT_CHARS) -> str:
    if isinstance(prompt, bytes):
        try:
            prompt = prompt.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError("prompt must be UTF-8 text") from None
    if not isinstance(prompt, str):
        raise ValidationError(f"prompt must be text, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text:
        raise ValidationError("prompt is empty: describe the music to generate")
    if len(text) > max_chars:
        raise ValidationError(f"prompt is too long: {len(text)} characters, at most {max_chars}")
    return text


def validate_params(
    duration,
    top_k=None,
    top_p=None,
    temperature=None,
    guidance_scale=None,
    seed=None,
    *,
    max_duration: float = DEFAULT_MAX_DURATION,
    vocab_size: int | None = None,
) -> GenerationParams:
    """Check every parameter; None means the default. Raises ValidationError with a clear message."""
    d = _finite("duration", duration)
    if not 0 < d <= max_duration:
        raise ValidationError(f"duration must be in (0, {max_duration:g}] seconds, got {d:g}")
    k = DEFAULT_TOP_K if top_k is None else _integer("top_k", top_k)
    if not 0 <= k <= MAX_TOP_K:
        raise ValidationError(f"top_k must be in [0, {MAX_TOP_K}] (0 = off), got {k}")
    if vocab_size is not None:
        k = min(k, vocab_size)  # as the reference: top-k over a smaller vocabulary keeps it all
    p = DEFAULT_TOP_P if top_p is None else _finite("top_p", top_p)
    if not 0.0 <= p <= 1.0:
        raise ValidationError(f"top_p must be in [0, 1] (0 = off), got {p:g}")
    t = DEFAULT_TEMPERATURE if temperature is None else _finite("temperature", temperature)
    if not 0.0 < t <= MAX_TEMPERATURE:
        raise ValidationError(f"temperature must be in (0, {MAX_TEMPERATURE:g}], got {t:g}")
    g = DEFAULT_GUIDANCE if guidance_scale is None else _finite("guidance_scale", guidance_scale)
    if not 1.0 <= g <= MAX_GUIDANCE:
        raise ValidationError(f"guidance_scale must be in [1, {MAX_GUIDANCE:g}] (1 = no guidance), got {g:g}")
    s = None if seed is None else _integer("seed", seed)
    if s is not None and not 0 <= s < 2**63:
        raise ValidationError(f"seed must be in [0, 2^63), got {s}")
    return GenerationParams(duration=d, top_k=k, top_p=p, temperature=t, guidance_scale=g, seed=s)
