"""The MusicGen client: generation (unary and streamed), health, model information.

>>> from client import MusicGenClient
>>> with MusicGenClient("localhost:8001") as mg:                 # gRPC; "http://localhost:8000" for HTTP
...     result = mg.generate("lo-fi beat with warm piano", duration=10, seed=1)
...     result.save("beat.wav", normalize="loudness")
...     for event in mg.stream("calm ambient pad", duration=5):   # gRPC only
...         print(event.kind, event.frames_done, event.frames_total)

A deployed host (deploy/): TLS and an API token, e.g.
``MusicGenClient("grpcs://203.0.113.10", token=..., ca_bundle="musicgen-ca.crt")``.

Parameters are validated here with :mod:`musicgen_runtime.validation` before anything is sent;
every failure is raised as a :class:`client.errors.MusicGenError` subclass with a plain message.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import numpy as np

try:
    from tritonclient._plugin import InferenceServerClientPlugin
except ImportError:  # pragma: no cover - without the client extra; _module() says so when used
    InferenceServerClientPlugin = None

from musicgen_runtime import audio_io, prompt_language
from musicgen_runtime.validation import (
    DEFAULT_MAX_DURATION,
    DEFAULT_WINDOW_SECONDS,
    GenerationParams,
    ValidationError,
    validate_params,
    validate_prompt,
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

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
PROTOCOLS = ("grpc", "http")
SCHEMES = {"grpc": ("grpc", False), "http": ("http", False), "grpcs": ("grpc", True), "https": ("http", True)}
TLS_PORT = 443
MODEL = "musicgen"
STREAM_MODEL = "musicgen_stream"
INFO_MODEL = "musicgen_info"
ENGINE_MODEL = "lm_engine"  # holds the `max_duration` and `window_seconds` parameters
OUTPUTS = ("audio", "sample_rate", "audio_codes", "seed_used")
PROMPT_FRAMES = "prompt_frames"  # where the new music starts in a continuation (0 without an audio prompt)


def parse_server_url(url: str | None, protocol: str | None = None) -> tuple[str, str, bool]:
    """('host:port', protocol, tls) from 'host:port', 'grpc://…', 'grpcs://…', 'http://…', 'https://…' or None.

    A scheme decides the protocol and TLS (grpcs = gRPC over TLS, https = HTTP over TLS); otherwise
    `protocol` (default gRPC), without TLS. A missing port is the default: gRPC 8001, HTTP 8000,
    and 443 with TLS (the deployed host's proxy).
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise InvalidParameter(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    url = (url or "").strip()
    scheme = ""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise InvalidParameter(f"unknown URL scheme {scheme!r}: use grpc://, grpcs://, http:// or https://")
        if protocol is not None and protocol != SCHEMES[scheme][0]:
            raise InvalidParameter(f"URL says {scheme} but protocol {protocol} was asked for")
        url = rest
    proto, tls = SCHEMES[scheme] if scheme else (protocol or "grpc", False)
    parts = urlsplit("//" + (url.rstrip("/") or "localhost"))
    if parts.path not in ("", "/"):
        raise InvalidParameter(f"the server URL takes no path: {url!r}")
    try:
        port = parts.port or (TLS_PORT if tls else DEFAULT_PORTS[proto])
    except ValueError:
        raise InvalidParameter(f"bad port in server URL {url!r}") from None
    host = parts.hostname or "localhost"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}", proto, tls


def parse_url(url: str | None, protocol: str | None = None) -> tuple[str, str]:
    """('host:port', protocol): :func:`parse_server_url` without the TLS flag."""
    return parse_server_url(url, protocol)[:2]


class BearerToken(InferenceServerClientPlugin if InferenceServerClientPlugin else object):
    """tritonclient plugin: `Authorization: Bearer <token>` on every request (HTTP and gRPC)."""

    def __init__(self, token: str):
        self._value = f"Bearer {token}"

    def __call__(self, request):
        request.headers["authorization"] = self._value

    def __repr__(self) -> str:  # never show the token
        return "BearerToken(***)"


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------


# a long clip's windows use the melody past 30 s; sent with 1 s more, within lm_engine's max_melody_seconds (60)
MELODY_SECONDS = 58.0
PROMPT_SECONDS = 41.0  # past the longest window (~40 s of positions): an audio prompt shares one with new music


@dataclass
class GenerationResult:
    """One generated clip."""

    audio: np.ndarray  # float32 [channels, samples]
    sample_rate: int
    codes: np.ndarray  # int64 [codebooks, frames]
    seed_used: int  # pass back as `seed` to reproduce the clip
    prompt: str
    params: GenerationParams
    elapsed: float  # wall seconds, request sent -> result received
    time_to_first_chunk: float | None = None  # streaming only: wall seconds to the first audio chunk
    prompt_frames: int = 0  # continuation: codec frames of the audio prompt at the start of codes and audio

    @property
    def channels(self) -> int:
        return int(self.audio.shape[0])

    @property
    def duration(self) -> float:
        """Seconds of audio returned."""
        return self.audio.shape[1] / float(self.sample_rate)

    @property
    def rtf(self) -> float:
        """Real-time factor: wall seconds per second of audio (lower is faster; < 1 is faster than real time)."""
        return self.elapsed / self.duration if self.duration else math.inf

    def save(
        self,
        path: str | Path,
        *,
        format: str | None = None,
        normalize: str | None = None,
        subtype: str | None = None,
        **normalize_kw,
    ) -> Path:
        """Write the audio (WAV/FLAC/OGG/MP3 by extension); see :mod:`musicgen_runtime.audio_io`."""
        return audio_io.write_audio(
            path,
            self.audio,
            self.sample_rate,
            format=format,
            subtype=subtype,
            normalize_strategy=normalize,
            **normalize_kw,
        )

    def to_bytes(self, format: str = "wav", normalize: str | None = None) -> bytes:
        return audio_io.encode_audio(self.audio, self.sample_rate, format, normalize_strategy=normalize)


@dataclass
class StreamEvent:
    """One message of a streamed generation.

    kind: "progress" (frames_done of frames_total), "audio_chunk" (`audio` [channels, n] starting at
    sample `chunk_start`), or "final" (`result` holds the whole clip; always the last event).
    """

    kind: str
    frames_done: int
    frames_total: int
    elapsed: float  # wall seconds since the request was sent
    audio: np.ndarray | None = None
    chunk_start: int | None = None
    result: GenerationResult | None = None

    @property
    def fraction(self) -> float:
        return self.frames_done / self.frames_total if self.frames_total else 0.0


@dataclass
class HealthReport:
    """What `MusicGenClient.health()` found. `ok` only when a real inference succeeded."""

    url: str
    protocol: str
    live: bool = False
    ready: bool = False
    models: dict[str, str] = field(default_factory=dict)  # name -> state from the repository index
    manifest: dict | None = None
    info_seconds: float | None = None
    generation_ok: bool | None = None  # None: not tried
    generation_seconds: float | None = None
    error: str | None = None
    error_kind: str | None = None  # the MusicGenError class name of `error`

    @property
    def random_weights(self) -> bool | None:
        return None if self.manifest is None else bool(self.manifest.get("random_weights"))

    @property
    def ok(self) -> bool:
        return (
            self.live
            and self.ready
            and self.manifest is not None
            and self.error is None
            and self.generation_ok is not False
        )

    def as_dict(self) -> dict:
        m = self.manifest or {}
        return {
            "ok": self.ok,
            "url": self.url,
            "protocol": self.protocol,
            "live": self.live,
            "ready": self.ready,
            "models": self.models,
            "checkpoint": m.get("source"),
            "precision": m.get("precision"),
            "random_weights": self.random_weights,
            "info_seconds": self.info_seconds,
            "generation_ok": self.generation_ok,
            "generation_seconds": self.generation_seconds,
            "error": self.error,
            "error_kind": self.error_kind,
        }


# ------------------------------------------------------------------------------------------------
# the client
# ------------------------------------------------------------------------------------------------


def _end_stream(conn, finished: bool, wait: float) -> None:
    """Close a tritonclient stream within ``wait`` s whatever the server does.

    A finished stream is half-closed politely (no cancellation after the final response), but
    tritonclient's ``stop_stream`` then joins a thread that ends only when the server ends the RPC:
    a frozen server, or one whose request hangs, never does. Past ``wait`` the RPC is cancelled (a
    local act that ends that thread). An unfinished stream is cancelled at once.
    """

    stream = getattr(conn, "_stream", None)

    def close(cancel: bool) -> None:
        try:
            conn.stop_stream(cancel_requests=cancel)
        except Exception:
            pass
        if cancel and stream is not None:
            # a cancel leaves grpc's request-sending thread waiting for the next request forever (one
            # thread leaked per cancelled stream): the end-of-requests marker lets it finish
            stream._request_queue.put(None)

    if finished:
        polite = threading.Thread(target=close, args=(False,), name="stream-close", daemon=True)
        polite.start()
        polite.join(wait)
        if polite.is_alive():
            close(True)
            polite.join(wait)
    else:
        close(True)
    try:
        conn.close()
    except Exception:
        pass


class MusicGenClient:
    """A MusicGen server at `url` over gRPC (default) or HTTP.

    timeout: seconds a generation may take before :class:`RequestTimeout` (also the stream's limit);
    connect_timeout: seconds for connecting and for the small calls (health, index, info).
    Safe to share between threads: each thread gets its own underlying tritonclient connection.
    """

    def __init__(
        self,
        url: str | None = None,
        protocol: str | None = None,
        *,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        model: str = MODEL,
        stream_model: str = STREAM_MODEL,
        info_model: str = INFO_MODEL,
        max_duration: float | None = None,
        token: str | None = None,
        ca_bundle: str | Path | None = None,
        tls: bool | None = None,
    ):
        self.endpoint, self.protocol, url_tls = parse_server_url(url, protocol)
        # TLS from the URL scheme (https://, grpcs://) or asked for; a CA bundle implies it
        self.tls = bool(url_tls or tls or ca_bundle)
        if tls is False and url_tls:
            raise InvalidParameter(f"the URL {url!r} asks for TLS but tls=False was given")
        self.ca_bundle = str(ca_bundle) if ca_bundle else None
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise InvalidParameter(f"CA bundle {self.ca_bundle!r} is not a readable file")
        if token is not None and (not token.strip() or any(c.isspace() for c in token.strip())):
            raise InvalidParameter("the API token must be one word without spaces")
        self._auth = BearerToken(token.strip()) if token else None
        if not (timeout > 0 and connect_timeout > 0):
            raise InvalidParameter("timeouts must be positive")
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.model, self.stream_model, self.info_model = model, stream_model, info_model
        self._engine_params = {} if max_duration is None else {"max_duration": float(max_duration)}
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        scheme = {"grpc": "grpcs", "http": "https"}[self.protocol] if self.tls else self.protocol
        return f"{scheme}://{self.endpoint}"

    def __repr__(self) -> str:
        return f"MusicGenClient({self.url!r})"

    # -- connections ------------------------------------------------------------------------------
    def _module(self):
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as mod
            else:
                import tritonclient.http as mod
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MusicGenError(f"tritonclient is not installed ({exc}): pip install '.[client]'") from None
        return mod

    def _new_conn(self):
        mod = self._module()
        try:
            if self.protocol == "grpc":
                conn = mod.InferenceServerClient(self.endpoint, ssl=self.tls, root_certificates=self.ca_bundle)
            else:
                tls_kw = {}
                if self.tls:  # verified TLS (geventhttpclient's default context): our CA bundle if given
                    tls_kw = {"ssl": True, "ssl_options": {"ca_certs": self.ca_bundle} if self.ca_bundle else None}
                conn = mod.InferenceServerClient(
                    self.endpoint, connection_timeout=self.connect_timeout, network_timeout=self.timeout, **tls_kw
                )
        except Exception as exc:
            raise classify(exc, url=self.url) from None
        if self._auth is not None:
            conn.register_plugin(self._auth)
        return conn

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._new_conn()
            self._local.conn = c
            with self._lock:
                self._all.append(c)
        return c

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except Exception:
                pass
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, fn: Callable, *args, model: str = "", timeout: float | None = None, **kw):
        """Run a tritonclient call, turning every failure into a MusicGenError."""
        try:
            return fn(*args, **kw)
        except MusicGenError:
            raise
        except Exception as exc:
            raise classify(exc, url=self.url, model=model, timeout=timeout) from None

    def _small_kw(self) -> dict:
        return {"client_timeout": self.connect_timeout} if self.protocol == "grpc" else {}

    # -- requests ---------------------------------------------------------------------------------
    @property
    def max_duration(self) -> float:
        """The server's duration limit (lm_engine's `max_duration` parameter); DEFAULT_MAX_DURATION if unknown."""
        return self._engine_parameter("max_duration", DEFAULT_MAX_DURATION)

    @property
    def window_seconds(self) -> float:
        """The server's window (lm_engine's `window_seconds`): an audio prompt must be shorter."""
        return self._engine_parameter("window_seconds", DEFAULT_WINDOW_SECONDS)

    def _engine_parameter(self, name: str, default: float) -> float:
        """A number from lm_engine's config parameters, read once; `default` if the server does not say."""
        if name not in self._engine_params:
            value = default
            try:
                cfg = self.model_config(ENGINE_MODEL)
                raw = cfg.get("parameters", {}).get(name, {}).get("string_value")
                if raw:
                    value = float(raw)
            except MusicGenError:
                return default  # not cached: the server may come up later
            except (TypeError, ValueError, AttributeError):
                pass
            self._engine_params[name] = value
        return self._engine_params[name]

    def validate(
        self, prompt, duration, top_k=None, top_p=None, temperature=None, guidance_scale=None, seed=None
    ) -> tuple[str, GenerationParams]:
        """The cleaned prompt and parameters, or InvalidParameter naming the bad one. A prompt with CJK
        characters gives a :class:`musicgen_runtime.prompt_language.PromptLanguageWarning`."""
        try:
            text = validate_prompt(prompt)
            params = validate_params(
                duration, top_k, top_p, temperature, guidance_scale, seed, max_duration=self.max_duration
            )
        except ValidationError as exc:
            raise InvalidParameter(f"invalid parameter: {exc}") from None
        warning = prompt_language.warning_for(text)
        if warning:  # sent as typed (never translated), but said: MusicGen reads English
            warnings.warn(f"MusicGen: {warning}", prompt_language.PromptLanguageWarning, stacklevel=2)
        return text, params

    @staticmethod
    def _prepare_audio(audio, what: str, max_seconds: float) -> tuple[np.ndarray, int] | None:
        """Audio as the server takes it: float32 [channels, samples] and its sample rate; at most
        `max_seconds` + 1 s are read and sent. Unusable audio -> InvalidParameter naming `what`."""
        if audio is None:
            return None
        from musicgen_runtime import chroma

        try:
            if isinstance(audio, tuple):
                wave, rate = audio
                wave = np.asarray(wave, dtype=np.float32)
            else:
                wave, rate = chroma.read_audio(audio, max_seconds=max_seconds, what=what)
            wave = chroma.channels_first(wave, what)
            wave = np.ascontiguousarray(wave[:, : int((max_seconds + 1) * int(rate))])
            chroma.check_wave(chroma.to_mono(wave, what), rate, what)
        except chroma.AudioInputError as exc:
            raise InvalidParameter(f"invalid {what}: {exc}") from None
        return wave, int(rate)

    @classmethod
    def prepare_melody(cls, melody) -> tuple[np.ndarray, int] | None:
        """A melody as the server takes it: float32 [channels, samples] and its sample rate.

        `melody`: a file path, file bytes or file object (WAV/FLAC/OGG, MP3 where libsndfile reads it),
        or a (waveform [samples] or [channels, samples], sample_rate) pair. Only the first
        MELODY_SECONDS are sent. Unusable audio -> InvalidParameter.
        """
        return cls._prepare_audio(melody, "melody", MELODY_SECONDS)

    @classmethod
    def prepare_audio_prompt(cls, audio_prompt) -> tuple[np.ndarray, int] | None:
        """An audio prompt to continue, as the server takes it (same forms as `prepare_melody`). A prompt
        longer than PROMPT_SECONDS is sent cut just past it, so the server's refusal names the limit."""
        return cls._prepare_audio(audio_prompt, "audio_prompt", PROMPT_SECONDS)

    def _inputs(self, prompt: str, params: GenerationParams, melody=None, audio_prompt=None) -> list:
        mod = self._module()

        def tensor(name, value, dtype, triton_type):
            t = mod.InferInput(name, [1], triton_type)
            arr = np.array([value], dtype=dtype)
            if self.protocol == "http":
                t.set_data_from_numpy(arr, binary_data=True)
            else:
                t.set_data_from_numpy(arr)
            return t

        inputs = [
            tensor("prompt", prompt.encode("utf-8"), object, "BYTES"),
            tensor("duration", params.duration, np.float32, "FP32"),
            tensor("top_k", params.top_k, np.int32, "INT32"),
            tensor("top_p", params.top_p, np.float32, "FP32"),
            tensor("temperature", params.temperature, np.float32, "FP32"),
            tensor("guidance_scale", params.guidance_scale, np.float32, "FP32"),
        ]
        if params.seed is not None:
            inputs.append(tensor("seed", params.seed, np.int64, "INT64"))
        for name, audio in (("melody", melody), ("audio_prompt", audio_prompt)):
            if audio is not None:
                wave, rate = audio
                t = mod.InferInput(name, list(wave.shape), "FP32")
                if self.protocol == "http":
                    t.set_data_from_numpy(wave, binary_data=True)
                else:
                    t.set_data_from_numpy(wave)
                inputs += [t, tensor(f"{name}_sample_rate", rate, np.int32, "INT32")]
        return inputs

    def _outputs(self, names):
        mod = self._module()
        if self.protocol == "http":
            return [mod.InferRequestedOutput(n, binary_data=True) for n in names]
        return [mod.InferRequestedOutput(n) for n in names]

    @staticmethod
    def _result(get, prompt, params, elapsed, ttfc=None) -> GenerationResult:
        audio, rate, codes, seed = (get(n) for n in OUTPUTS)
        if audio is None or rate is None or codes is None or seed is None:
            raise GenerationError("the server's answer lacks audio, sample_rate, audio_codes or seed_used")
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None]
        prompt_frames = get(PROMPT_FRAMES)
        return GenerationResult(
            audio=audio,
            sample_rate=int(np.asarray(rate).reshape(-1)[0]),
            codes=np.asarray(codes, dtype=np.int64),
            seed_used=int(np.asarray(seed).reshape(-1)[0]),
            prompt=prompt,
            params=params,
            elapsed=elapsed,
            time_to_first_chunk=ttfc,
            prompt_frames=0 if prompt_frames is None else int(np.asarray(prompt_frames).reshape(-1)[0]),
        )

    def generate(
        self,
        prompt: str,
        duration: float,
        *,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        stream: bool = False,
        on_event: Callable[[StreamEvent], None] | None = None,
        melody=None,
        audio_prompt=None,
    ) -> GenerationResult:
        """Generate one clip. None means the server default (top_k 250, top_p 0, temperature 1,
        guidance 3, random seed). With `stream` (gRPC only) the clip comes through `musicgen_stream`
        and `on_event` sees every progress/audio event as it arrives. `melody` (melody checkpoints
        only): see `prepare_melody`. `audio_prompt` (a file, or (wave, rate)): the clip continues it;
        `duration` is then the new music's, and the result holds the prompt's part first
        (`prompt_frames`)."""
        if stream:
            result = None
            for event in self.stream(
                prompt,
                duration,
                top_k=top_k,
                top_p=top_p,
                temperature=temperature,
                guidance_scale=guidance_scale,
                seed=seed,
                melody=melody,
                audio_prompt=audio_prompt,
            ):
                if on_event is not None:
                    on_event(event)
                if event.kind == "final":
                    result = event.result
            assert result is not None  # stream() raises when no final event arrives
            return result
        text, params = self.validate(prompt, duration, top_k, top_p, temperature, guidance_scale, seed)
        mel = self.prepare_melody(melody)
        cont = self.prepare_audio_prompt(audio_prompt)
        conn = self._conn()
        kw = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        t0 = time.perf_counter()
        resp = self._call(
            conn.infer,
            self.model,
            self._inputs(text, params, mel, cont),
            outputs=self._outputs((*OUTPUTS, PROMPT_FRAMES)),
            model=self.model,
            timeout=self.timeout,
            **kw,
        )
        elapsed = time.perf_counter() - t0
        return self._result(resp.as_numpy, text, params, elapsed)

    def stream(
        self,
        prompt: str,
        duration: float,
        *,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        melody=None,
        audio_prompt=None,
    ) -> Iterator[StreamEvent]:
        """Yield progress and audio-chunk events, then one "final" event with the result (gRPC only).

        Leaving the loop early cancels the request on the server.
        """
        if self.protocol != "grpc":
            raise InvalidParameter(
                "streaming needs gRPC (Triton's HTTP endpoint refuses decoupled models): "
                "use a grpc:// URL, or generate without streaming"
            )
        text, params = self.validate(prompt, duration, top_k, top_p, temperature, guidance_scale, seed)
        mel = self.prepare_melody(melody)
        cont = self.prepare_audio_prompt(audio_prompt)
        mod = self._module()
        conn = self._new_conn()  # one stream per connection
        q: queue.Queue = queue.Queue()
        finished = False
        t0 = time.perf_counter()
        deadline = t0 + self.timeout
        try:
            # triton_grpc_error: an error ends the stream with its gRPC status (INVALID_ARGUMENT, ...)
            # instead of a bare message, so it is classified like a unary call's
            self._call(
                conn.start_stream,
                lambda result, error: q.put((result, error)),
                stream_timeout=self.timeout,
                headers={"triton_grpc_error": "true"},
                model=self.stream_model,
            )
            outputs = [
                mod.InferRequestedOutput(n)
                for n in ("event", "frames_done", "frames_total", "audio_chunk", "chunk_start", *OUTPUTS, PROMPT_FRAMES)
            ]
            try:
                conn.async_stream_infer(
                    self.stream_model,
                    self._inputs(text, params, mel, cont),
                    outputs=outputs,
                    enable_empty_final_response=True,
                )
            except Exception as exc:  # the real cause (e.g. connection refused) went to the callback
                try:
                    _, cause = q.get(timeout=1.0)
                except queue.Empty:
                    cause = None
                raise classify(cause or exc, url=self.url, model=self.stream_model, timeout=self.timeout) from None
            first_chunk = None
            while True:
                remaining = deadline - time.perf_counter()
                try:
                    result, error = q.get(timeout=max(remaining, 0.001))
                except queue.Empty:
                    raise RequestTimeout(f"no answer from the server at {self.url} within {self.timeout:g} s") from None
                if error is not None:
                    raise classify(error, url=self.url, model=self.stream_model, timeout=self.timeout)
                elapsed = time.perf_counter() - t0
                event = result.as_numpy("event")
                if event is None:  # the empty closing response
                    final_flag = result.get_response().parameters.get("triton_final_response")
                    if final_flag is not None and final_flag.bool_param:
                        raise GenerationError("the stream ended without a final result")
                    continue
                kind = event.reshape(-1)[0]
                kind = kind.decode() if isinstance(kind, bytes) else str(kind)
                done = int(result.as_numpy("frames_done").reshape(-1)[0])
                total = int(result.as_numpy("frames_total").reshape(-1)[0])
                if kind == "audio_chunk":
                    if first_chunk is None:
                        first_chunk = elapsed
                    yield StreamEvent(
                        kind,
                        done,
                        total,
                        elapsed,
                        audio=np.asarray(result.as_numpy("audio_chunk"), dtype=np.float32),
                        chunk_start=int(result.as_numpy("chunk_start").reshape(-1)[0]),
                    )
                elif kind == "final":
                    res = self._result(result.as_numpy, text, params, elapsed, first_chunk)
                    finished = True
                    yield StreamEvent(kind, done, total, elapsed, result=res)
                    return
                else:
                    yield StreamEvent(kind, done, total, elapsed)
        finally:
            _end_stream(conn, finished, self.connect_timeout)

    # -- information ------------------------------------------------------------------------------
    def models(self) -> list[dict]:
        """The repository index: [{'name', 'version', 'state', 'reason'}] for every model."""
        conn = self._conn()
        if self.protocol == "grpc":
            raw = self._call(conn.get_model_repository_index, as_json=True, **self._small_kw())
            raw = raw.get("models", [])
        else:
            raw = self._call(conn.get_model_repository_index)
        return [
            {
                "name": m.get("name", ""),
                "version": str(m.get("version", "")),
                "state": m.get("state", ""),
                "reason": m.get("reason", ""),
            }
            for m in raw
        ]

    def model_config(self, name: str) -> dict:
        conn = self._conn()
        if self.protocol == "grpc":
            cfg = self._call(conn.get_model_config, name, as_json=True, model=name, **self._small_kw())
            return cfg.get("config", cfg)
        return self._call(conn.get_model_config, name, model=name)

    def info(self) -> dict:
        """The export manifest from `musicgen_info`: checkpoint source, dims, precision, random_weights, …"""
        mod = self._module()
        conn = self._conn()
        q = mod.InferInput("query", [1], "BYTES")
        if self.protocol == "http":
            q.set_data_from_numpy(np.array([b"manifest"], dtype=object), binary_data=True)
        else:
            q.set_data_from_numpy(np.array([b"manifest"], dtype=object))
        resp = self._call(
            conn.infer,
            self.info_model,
            [q],
            outputs=self._outputs(["manifest"]),
            model=self.info_model,
            timeout=self.connect_timeout,
            **self._small_kw(),
        )
        raw = resp.as_numpy("manifest")
        if raw is None:
            raise GenerationError(f"{self.info_model} returned no manifest")
        text = raw.reshape(-1)[0]
        try:
            return json.loads(text.decode() if isinstance(text, bytes) else text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GenerationError(f"{self.info_model} returned an unreadable manifest ({exc})") from None

    def is_random_weights(self) -> bool:
        return bool(self.info().get("random_weights"))

    def health(self, generate: bool = True, duration: float = 0.1) -> HealthReport:
        """Liveness, readiness, the model index, the manifest and (unless `generate` is False) a real
        `duration`-second generation. Never raises: the report says what failed.

        /v2/health/ready stays 200 when a python model's process died, so only the inference counts.
        """
        rep = HealthReport(url=self.url, protocol=self.protocol)
        try:
            conn = self._conn()
            kw = self._small_kw()
            rep.live = bool(self._call(conn.is_server_live, **kw))
            rep.ready = bool(self._call(conn.is_server_ready, **kw))
            rep.models = {m["name"]: m["state"] for m in self.models()}
            t0 = time.perf_counter()
            rep.manifest = self.info()
            rep.info_seconds = round(time.perf_counter() - t0, 4)
            missing = [m for m in (self.model,) if rep.models.get(m) != "READY"]
            if missing:
                raise ModelNotReady(
                    f"model '{missing[0]}' is {rep.models.get(missing[0], 'missing').lower()} "
                    f"on the server at {self.url}"
                )
            if generate:
                rep.generation_ok = False
                t0 = time.perf_counter()
                self.generate("health check", duration, seed=0)
                rep.generation_seconds = round(time.perf_counter() - t0, 4)
                rep.generation_ok = True
            if not rep.ready:
                raise ModelNotReady(f"the server at {self.url} is live but not ready")
        except MusicGenError as exc:
            rep.error, rep.error_kind = exc.message, type(exc).__name__
        return rep

    def wait_until_ready(self, timeout: float = 120.0, interval: float = 0.5, generate: bool = False) -> HealthReport:
        """Poll `health()` until it is ok; raises the last error after `timeout` seconds."""
        end = time.monotonic() + timeout
        while True:
            rep = self.health(generate=generate)
            if rep.ok:
                return rep
            if time.monotonic() >= end:
                cls = {
                    "ServerUnavailable": ServerUnavailable,
                    "InvalidParameter": InvalidParameter,
                    "RequestTimeout": RequestTimeout,
                    "GenerationError": GenerationError,
                }.get(rep.error_kind or "", ModelNotReady)
                raise cls(rep.error or f"the server at {self.url} is not ready after {timeout:g} s")
            time.sleep(interval)
