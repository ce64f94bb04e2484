"""Pure page logic: examples, parameter checks, ETA, formatting, model choice, history entries.

Nothing here imports Streamlit or talks to the server, so all of it is unit-tested directly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from musicgen_runtime import names, progress, validation
from musicgen_runtime.progress import format_clock
from musicgen_runtime.validation import GenerationParams, ValidationError

from .strings import EXAMPLES, t

EXAMPLE_PROMPTS = tuple(en for en, _ in EXAMPLES)

DURATION_MIN = 1
DURATION_MAX = validation.DEFAULT_MAX_DURATION  # only until the server says its own limit (lm_engine max_duration)
DURATION_DEFAULT = 8

MODEL_TYPE_TEXT = "musicgen"
MODEL_TYPE_MELODY = "musicgen_melody"

# Models of the serving contract that are pipeline stages or helpers, never offered to the user.
INTERNAL_MODELS = frozenset({"lm_engine", "musicgen_lm", "tokenizer", "text_encoder", "audio_decoder", "musicgen_info"})
STREAM_SUFFIX = "_stream"

SEED_RANDOM = "Random"
SEED_FIXED = "Fixed"
SEED_MAX = 2**63 - 1

# Loudness of the player and the downloads: the CLI's --normalize choices and default, one code path
# (musicgen_runtime.audio_io.normalize, through audio_io.encode_audio).
NORMALIZE_DEFAULT = "loudness"
NORMALIZE_CHOICES = ("loudness", "peak", "rms", "clip", "none")
DOWNLOAD_FORMATS = ("wav", "flac", "mp3", "ogg")

MAX_UPLOAD_MB = 20
MAX_MELODY_SECONDS = 60.0
MELODY_EXTENSIONS = ("wav", "flac", "ogg", "mp3", "aiff", "aif")


# ---- parameters --------------------------------------------------------------------------------


def parse_seed(mode: str, text: str | int | None, lang: str = "en") -> int | None:
    """The seed to send: None for a random seed (the server draws one and returns it)."""
    if mode != SEED_FIXED:
        return None
    raw = str(text if text is not None else "").strip().replace("_", "").replace(",", "")
    if not raw:
        raise ValidationError(t("seed_empty", lang))
    try:
        seed = int(raw)
    except ValueError:
        raise ValidationError(t("seed_not_int", lang, text=str(text).strip())) from None
    if not 0 <= seed <= SEED_MAX:
        raise ValidationError(t("seed_range", lang, seed=seed))
    return seed


def duration_limit(max_duration: float | None) -> float:
    """The duration slider's maximum: the server's limit (the client reads lm_engine's `max_duration`),
    DURATION_MAX while it is unknown; never below DURATION_MIN."""
    return float(max(DURATION_MIN, max_duration or DURATION_MAX))


def check_continuation(prompt_seconds: float, window_seconds: float, lang: str = "en") -> None:
    """An audio prompt must be shorter than one window of `window_seconds` (the server's rule,
    said before sending); raises ValidationError."""
    if prompt_seconds >= window_seconds:
        raise ValidationError(t("continuation_window", lang, prompt=prompt_seconds, window=window_seconds))


def build_request(
    prompt,
    duration,
    top_k,
    top_p,
    temperature,
    guidance_scale,
    seed_mode,
    seed_text,
    *,
    max_duration: float = DURATION_MAX,
    lang: str = "en",
) -> tuple[str, GenerationParams]:
    """Check what the form holds, with the same rules and messages as the server; raises ValidationError."""
    text = validation.validate_prompt(prompt)
    seed = parse_seed(seed_mode, seed_text, lang)
    params = validation.validate_params(
        duration, top_k, top_p, temperature, guidance_scale, seed, max_duration=max_duration
    )
    return text, params


# ---- progress and ETA --------------------------------------------------------------------------


class Progress(progress.Progress):
    """The shared progress/ETA measure (musicgen_runtime.progress) with the page's progress line."""

    def text(self, now: float, lang: str = "en") -> str:
        elapsed = format_clock(now - self.started)
        if self.frames_total <= 0:
            return t("progress_starting", lang, elapsed=elapsed)
        eta = self.eta(now)
        eta_s = t("progress_estimating", lang) if eta is None else t("progress_left", lang, eta=format_clock(eta))
        if self.frames_done >= self.frames_total:
            eta_s = t("progress_decoding", lang)
        parts = [
            f"{self.fraction * 100:.0f}%",
            t("progress_elapsed", lang, elapsed=elapsed),
            eta_s,
            t("progress_frames", lang, done=self.frames_done, total=self.frames_total),
        ]
        if self.audio_seconds > 0:
            parts.append(t("progress_audio", lang, seconds=self.audio_seconds))
        return " · ".join(parts)


def format_seconds(seconds: float, lang: str = "en") -> str:
    return t("seconds", lang, value=seconds) if seconds < 60 else format_clock(seconds)


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


def model_label(model: str, lang: str = "en") -> str:
    return t("model_live" if is_streaming(model) else "model_not_live", lang, model=model)


def melody_support(manifest: dict | None, lang: str = "en") -> tuple[bool, str]:
    """Whether a melody can be uploaded, and the reason shown when it cannot."""
    if not manifest:
        return False, t("melody_unknown", lang)
    kind = str(manifest.get("model_type") or MODEL_TYPE_TEXT)
    if kind == MODEL_TYPE_MELODY:
        return True, t("melody_ok", lang)
    return False, t("melody_off", lang, ckpt=checkpoint_label(manifest, lang), kind=kind, melody_type=MODEL_TYPE_MELODY)


def continuation_support(manifest: dict | None, lang: str = "en") -> tuple[bool, str]:
    """Whether an audio prompt can be uploaded (a text-only export with the prompt encoder graph), and why not."""
    if not manifest:
        return False, t("continue_unknown", lang)
    kind = str(manifest.get("model_type") or MODEL_TYPE_TEXT)
    if kind == MODEL_TYPE_TEXT and names.AUDIO_ENCODER_FILE in (manifest.get("files") or {}):
        return True, t("continue_ok", lang)
    return False, t("continue_off", lang, ckpt=checkpoint_label(manifest, lang), kind=kind)


def checkpoint_label(manifest: dict | None, lang: str = "en") -> str:
    found = manifest and (manifest.get("source") or manifest.get("requested_source") or manifest.get("checkpoint_path"))
    return str(found) if found else t("unknown", lang)


def manifest_facts(manifest: dict | None, lang: str = "en") -> list[tuple[str, str]]:
    """(label, value) lines for the server status panel."""
    if not manifest:
        return []
    dims = manifest.get("dims") or {}
    facts = [
        (t("fact_checkpoint", lang), checkpoint_label(manifest, lang)),
        (t("fact_model_type", lang), str(manifest.get("model_type", "?"))),
        (t("fact_precision", lang), str(manifest.get("precision", "?"))),
    ]
    if dims.get("sample_rate"):
        ch = t("stereo" if dims.get("audio_channels", 1) == 2 else "mono", lang)
        facts.append((t("fact_audio", lang), t("audio_format", lang, khz=dims["sample_rate"] / 1000, channels=ch)))
    if manifest.get("exported_at"):
        facts.append((t("fact_exported", lang), str(manifest["exported_at"])))
    return facts


def random_weights(manifest: dict | None) -> bool:
    return bool(manifest and manifest.get("random_weights"))


def random_weights_banner(manifest: dict | None, lang: str = "en") -> str:
    return t("random_weights_banner", lang, ckpt=checkpoint_label(manifest, lang))


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
    prompt_seconds: float = 0.0  # continuation: the audio prompt's part at the start of the clip
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


def make_entry(
    number: int,
    prompt: str,
    model: str,
    params: GenerationParams,
    seed_used: int,
    sample_rate: int,
    channels: int,
    samples: int,
    elapsed: float,
    prompt_seconds: float = 0.0,
) -> ResultEntry:
    return ResultEntry(
        number=number,
        prompt=prompt,
        model=model,
        params=asdict(params),
        seed_used=int(seed_used),
        sample_rate=int(sample_rate),
        channels=int(channels),
        samples=int(samples),
        elapsed=float(elapsed),
        prompt_seconds=float(prompt_seconds),
    )


def params_summary(entry: ResultEntry, lang: str = "en") -> str:
    p = entry.params
    seed_kind = t("seed_kind_fixed" if p.get("seed") is not None else "seed_kind_random", lang)
    return t(
        "params_summary",
        lang,
        duration=p["duration"],
        top_k=p["top_k"],
        top_p=p["top_p"],
        temperature=p["temperature"],
        guidance=p["guidance_scale"],
        seed=entry.seed_used,
        seed_kind=seed_kind,
        model=entry.model,
    )


def continuation_summary(entry: ResultEntry, lang: str = "en") -> str:
    """Where the new music starts in a continued clip ('' for a clip from text alone)."""
    if entry.prompt_seconds <= 0:
        return ""
    return t("continuation_summary", lang, prompt=entry.prompt_seconds, new=entry.audio_seconds - entry.prompt_seconds)


def timing_summary(entry: ResultEntry, lang: str = "en") -> str:
    return t(
        "timing_summary",
        lang,
        audio=entry.audio_seconds,
        elapsed=format_seconds(entry.elapsed, lang),
        rtf=entry.realtime_factor,
    )


_MD_SPECIAL = "\\`*_{}[]()<>#+-.!|~$:"


def md_escape(text: str) -> str:
    """User text shown through Streamlit markdown (titles, labels) literally: no bold, links or LaTeX."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in " ".join(str(text).split()))


def file_stem(entry: ResultEntry, max_words: int = 6) -> str:
    """A safe file name for downloads: musicgen-3-lo-fi-hip-hop-seed123."""
    words = "".join(c if c.isalnum() else " " for c in entry.prompt.lower()).split()[:max_words]
    slug = "-".join(words)[:48].strip("-") or "clip"
    return f"musicgen-{entry.number}-{slug}-seed{entry.seed_used}"
