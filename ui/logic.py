"""Pure page logic: examples, parameter checks, ETA, formatting, model choice, history entries.

Nothing here imports Streamlit or talks to the server, so all of it is unit-tested directly.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from musicgen_runtime import validation
from musicgen_runtime.validation import GenerationParams, ValidationError

EXAMPLE_PROMPTS = (
    "80s pop track with bassy drums and synth",
    "lo-fi hip hop beat with mellow piano and vinyl crackle, 75 bpm",
    "epic orchestral soundtrack with strings and big brass, building tension",
    "relaxing acoustic guitar by a campfire, warm and intimate",
    "upbeat funk with slap bass, clavinet and tight horn stabs",
    "ambient drone with evolving pads and distant bells",
    "90s rock song with loud guitars and heavy drums",
    "jazz trio in a smoky club: brushed drums, upright bass, piano",
)

DURATION_MIN = 1
DURATION_MAX = 30
DURATION_DEFAULT = 8

MODEL_TYPE_TEXT = "musicgen"
MODEL_TYPE_MELODY = "musicgen_melody"

# Models of the serving contract that are pipeline stages or helpers, never offered to the user.
INTERNAL_MODELS = frozenset({"lm_engine", "musicgen_lm", "tokenizer", "text_encoder", "audio_decoder",
                             "musicgen_info"})
STREAM_SUFFIX = "_stream"

SEED_RANDOM = "Random"
SEED_FIXED = "Fixed"
SEED_MAX = 2 ** 63 - 1

MAX_UPLOAD_MB = 20
MAX_MELODY_SECONDS = 60.0
MELODY_EXTENSIONS = ("wav", "flac", "ogg", "mp3", "aiff", "aif")


# ---- parameters --------------------------------------------------------------------------------

def parse_seed(mode: str, text: str | int | None) -> int | None:
    """The seed to send: None for a random seed (the server draws one and returns it)."""
    if mode != SEED_FIXED:
        return None
    raw = str(text if text is not None else "").strip().replace("_", "").replace(",", "")
    if not raw:
        raise ValidationError("seed is empty: type a whole number (0 to 2^63-1) or choose a random seed")
    try:
        seed = int(raw)
    except ValueError:
        raise ValidationError(f"seed must be a whole number from 0 to 2^63-1, got {str(text).strip()!r}") from None
    if not 0 <= seed <= SEED_MAX:
        raise ValidationError(f"seed must be in [0, 2^63), got {seed}")
    return seed


def build_request(prompt, duration, top_k, top_p, temperature, guidance_scale, seed_mode, seed_text,
                  *, max_duration: float = DURATION_MAX) -> tuple[str, GenerationParams]:
    """Check what the form holds, with the same rules and messages as the server; raises ValidationError."""
    text = validation.validate_prompt(prompt)
    seed = parse_seed(seed_mode, seed_text)
    params = validation.validate_params(duration, top_k, top_p, temperature, guidance_scale, seed,
                                        max_duration=max_duration)
    return text, params


# ---- progress and ETA --------------------------------------------------------------------------

@dataclass
class Progress:
    """Progress of one generation: frames from the stream events, times from the caller's clock.

    The rate is measured from the first progress event on (the start-up before it — text encoding,
    queueing — is not generation speed). Before a rate is known, `prior_rate` (frames per second of
    an earlier result in this session) gives a first estimate.
    """

    started: float
    frames_total: int = 0
    frames_done: int = 0
    prior_rate: float | None = None
    audio_seconds: float = 0.0
    _first: tuple[float, int] | None = None
    _last_time: float | None = None

    def update(self, now: float, done: int, total: int) -> None:
        done, total = int(done), int(total)
        if total > 0:
            self.frames_total = total
        if self._first is None:
            self._first = (now, done)
        if done >= self.frames_done:
            self.frames_done = done
            self._last_time = now

    @property
    def fraction(self) -> float:
        if self.frames_total <= 0:
            return 0.0
        return min(1.0, max(0.0, self.frames_done / self.frames_total))

    def rate(self) -> float | None:
        """Frames per second measured so far (None until two progress points)."""
        if self._first is None or self._last_time is None:
            return None
        t0, f0 = self._first
        dt, df = self._last_time - t0, self.frames_done - f0
        if dt <= 0 or df <= 0:
            return None
        return df / dt

    def eta(self, now: float) -> float | None:
        """Seconds left, or None when nothing allows an estimate yet."""
        if self.frames_total > 0 and self.frames_done >= self.frames_total:
            return 0.0
        rate = self.rate() or self.prior_rate
        if not rate or self.frames_total <= 0:
            return None
        remaining = (self.frames_total - self.frames_done) / rate
        since = now - (self._last_time if self._last_time is not None else self.started)
        return max(0.0, remaining - max(0.0, since))

    def text(self, now: float) -> str:
        elapsed = now - self.started
        if self.frames_total <= 0:
            return f"Starting… {format_clock(elapsed)} elapsed"
        eta = self.eta(now)
        eta_s = "estimating…" if eta is None else f"about {format_clock(eta)} left"
        if self.frames_done >= self.frames_total:
            eta_s = "decoding the audio…"
        parts = [f"{self.fraction * 100:.0f}%", f"{format_clock(elapsed)} elapsed", eta_s,
                 f"{self.frames_done}/{self.frames_total} frames"]
        if self.audio_seconds > 0:
            parts.append(f"{self.audio_seconds:.1f} s of audio ready")
        return " · ".join(parts)


def format_clock(seconds: float | None) -> str:
    """0:07, 1:05, 1:02:03; '–' for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else format_clock(seconds)


def format_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# ---- server / models -----------------------------------------------------------------------------

def generation_models(models: list[dict] | list[str]) -> list[str]:
    """The user-facing generation models among those loaded: streaming ones first, internal ones left out.

    `models` is the repository index ({name, state}) or plain names (already known ready).
    """
    names = []
    for m in models:
        if isinstance(m, str):
            name, state = m, "READY"
        else:
            name, state = m.get("name", ""), (m.get("state") or "READY")
        if not name or name in INTERNAL_MODELS or state.upper() != "READY":
            continue
        if name not in names:
            names.append(name)
    return sorted(names, key=lambda n: (not n.endswith(STREAM_SUFFIX), n))


def is_streaming(model: str) -> bool:
    return model.endswith(STREAM_SUFFIX)


def model_label(model: str) -> str:
    return f"{model} (live progress)" if is_streaming(model) else f"{model} (no live progress)"


def melody_support(manifest: dict | None) -> tuple[bool, str]:
    """Whether a melody can be uploaded, and the reason shown when it cannot."""
    if not manifest:
        return False, "Melody upload is off: the server's model is unknown (server not reachable)."
    kind = str(manifest.get("model_type") or MODEL_TYPE_TEXT)
    if kind == MODEL_TYPE_MELODY:
        return True, "The served model takes a melody: its tune guides the generated music."
    return False, (f"Melody upload is off: the served model ({checkpoint_label(manifest)}, type '{kind}') "
                   f"is text-only. A '{MODEL_TYPE_MELODY}' checkpoint is needed for melody conditioning.")


def checkpoint_label(manifest: dict | None) -> str:
    if not manifest:
        return "unknown"
    return str(manifest.get("source") or manifest.get("requested_source") or manifest.get("checkpoint_path")
               or "unknown")


def manifest_facts(manifest: dict | None) -> list[tuple[str, str]]:
    """(label, value) lines for the server status panel."""
    if not manifest:
        return []
    dims = manifest.get("dims") or {}
    facts = [("Checkpoint", checkpoint_label(manifest)),
             ("Model type", str(manifest.get("model_type", "?"))),
             ("Precision", str(manifest.get("precision", "?")))]
    if dims.get("sample_rate"):
        ch = dims.get("audio_channels", 1)
        facts.append(("Audio", f"{dims['sample_rate'] / 1000:g} kHz, {'stereo' if ch == 2 else 'mono'}"))
    if manifest.get("exported_at"):
        facts.append(("Exported", str(manifest["exported_at"])))
    return facts


def random_weights(manifest: dict | None) -> bool:
    return bool(manifest and manifest.get("random_weights"))


RANDOM_WEIGHTS_BANNER = ("DEMO MODEL WITH RANDOM WEIGHTS — it makes noise, not music. The server is running "
                         "the '{ckpt}' export, whose weights are random (made offline for tests). Export a real "
                         "checkpoint (e.g. `make run CHECKPOINT=facebook/musicgen-small`) to get music.")


# ---- results -----------------------------------------------------------------------------------------

@dataclass
class ResultEntry:
    """One generated clip and everything needed to reproduce it."""

    number: int
    prompt: str
    model: str
    params: dict  # GenerationParams as a dict (seed = the one requested, None when random)
    seed_used: int
    sample_rate: int
    channels: int
    samples: int
    elapsed: float
    created: float = field(default_factory=time.time)

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio made per second of waiting."""
        return self.audio_seconds / self.elapsed if self.elapsed > 0 else 0.0

    def reproduce_params(self) -> dict:
        """The form values that give this result again: same parameters, seed fixed to `seed_used`."""
        return {**self.params, "seed": self.seed_used}


def make_entry(number: int, prompt: str, model: str, params: GenerationParams, seed_used: int,
               sample_rate: int, channels: int, samples: int, elapsed: float) -> ResultEntry:
    return ResultEntry(number=number, prompt=prompt, model=model, params=asdict(params), seed_used=int(seed_used),
                       sample_rate=int(sample_rate), channels=int(channels), samples=int(samples),
                       elapsed=float(elapsed))


def params_summary(entry: ResultEntry) -> str:
    p = entry.params
    seed_kind = "fixed" if p.get("seed") is not None else "random"
    return (f"{p['duration']:g} s · top-k {p['top_k']} · top-p {p['top_p']:g} · temperature {p['temperature']:g}"
            f" · guidance {p['guidance_scale']:g} · seed {entry.seed_used} ({seed_kind}) · {entry.model}")


def timing_summary(entry: ResultEntry) -> str:
    return (f"{entry.audio_seconds:.1f} s of audio in {format_seconds(entry.elapsed)}"
            f" ({entry.realtime_factor:.2f}× real time)")


_MD_SPECIAL = "\\`*_{}[]()<>#+-.!|~$:"


def md_escape(text: str) -> str:
    """User text shown through Streamlit markdown (titles, labels) literally: no bold, links or LaTeX."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in " ".join(str(text).split()))


def file_stem(entry: ResultEntry, max_words: int = 6) -> str:
    """A safe file name for downloads: musicgen-3-lo-fi-hip-hop-seed123."""
    words = "".join(c if c.isalnum() else " " for c in entry.prompt.lower()).split()[:max_words]
    slug = "-".join(words)[:48].strip("-") or "clip"
    return f"musicgen-{entry.number}-{slug}-seed{entry.seed_used}"
