"""`musicgen`: generate music, check the server, list its models.

    musicgen generate "lo-fi beat with warm piano" --duration 10 --out beat.wav
    musicgen generate "calm ambient pad" --duration 5 --seed 7 --top-k 250 --guidance-scale 3 --out pad.flac
    musicgen health                     # a real 0.1 s generation, not just /v2/health/ready
    musicgen models                     # repository index + export manifest (random weights?)

Server: --url (or $MUSICGEN_URL), default grpc://localhost:8001; --protocol grpc|http.
Exit codes: 0 ok, 1 other failure, 2 usage or invalid parameter, 3 server unavailable or model
not ready, 130 interrupted. Messages go to stderr; results (or --json) to stdout.

Files are loudness-normalised to -14 LUFS by default (--normalize), with the same code as the web
page's downloads. A prompt in Chinese (Japanese, Korean) gets a warning: MusicGen reads English.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path

from musicgen_runtime import progress as eta_clock
from musicgen_runtime import prompt_language

from .api import MusicGenClient, StreamEvent
from .errors import (
    AuthenticationError,
    InvalidParameter,
    ModelNotReady,
    MusicGenError,
    ServerUnavailable,
    TLSError,
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_ACCESS = 4  # the API token was refused, or TLS with the server failed
NORMALIZE = ("none", "clip", "peak", "rms", "loudness")


def _err(msg: str) -> None:
    print(f"musicgen: {msg}", file=sys.stderr, flush=True)


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, InvalidParameter):
        return EXIT_USAGE
    if isinstance(exc, (ServerUnavailable, ModelNotReady)):
        return EXIT_UNAVAILABLE
    if isinstance(exc, (AuthenticationError, TLSError)):
        return EXIT_ACCESS
    return EXIT_FAIL


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: exit 2 with one line, as argparse does, but prefixed
        self.print_usage(sys.stderr)
        _err(message)
        raise SystemExit(EXIT_USAGE)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    conn = argparse.ArgumentParser(add_help=False)
    g = conn.add_argument_group("server")
    g.add_argument(
        "--url",
        default=os.environ.get("MUSICGEN_URL"),
        help="server address: host:port, grpc://host:port, http://host:port, or over TLS "
        "grpcs://host[:port], https://host[:port] ($MUSICGEN_URL; default localhost:8001 for "
        "gRPC, :8000 for HTTP, 443 with TLS)",
    )
    g.add_argument(
        "--protocol",
        choices=("grpc", "http"),
        default=os.environ.get("MUSICGEN_PROTOCOL"),
        help="protocol when the URL has no scheme (default grpc)",
    )
    g.add_argument("--tls", action="store_true", help="TLS for a URL without scheme (as grpcs:// or https://)")
    g.add_argument(
        "--ca-bundle",
        metavar="PEM",
        default=os.environ.get("MUSICGEN_CA_BUNDLE") or None,
        help="CA certificate(s) to trust for TLS, e.g. the deployed host's exported CA "
        "($MUSICGEN_CA_BUNDLE; default: the system's trust store)",
    )
    g.add_argument(
        "--token",
        default=None,
        help="API token for a deployed host (default $MUSICGEN_API_TOKEN; prefer the variable: "
        "a flag shows in the process list)",
    )
    g.add_argument(
        "--timeout", type=_positive_float, default=600.0, metavar="S", help="seconds a request may take (default 600)"
    )
    g.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    p = _Parser(
        prog="musicgen",
        description="Text-to-music with the MusicGen Triton server.",
        epilog="exit codes: 0 ok, 1 failure, 2 usage/invalid parameter, 3 server unavailable or "
        "model not ready, 4 API token refused or TLS failure",
    )
    sub = p.add_subparsers(dest="command", metavar="{generate,health,models}", parser_class=_Parser)
    sub.required = True

    gen = sub.add_parser(
        "generate",
        parents=[conn],
        help="generate a clip and save it",
        description="Generate a clip from a text prompt and write it to a file "
        "(WAV, FLAC, OGG or MP3 by extension), loudness-normalised to -14 LUFS "
        "by default, as the web page's downloads. Streaming shows a progress bar "
        "with the elapsed time and an ETA.",
        epilog="MusicGen's text encoder was trained on English descriptions: describe the music "
        "in English (genre, instruments, mood, tempo). A prompt with Chinese, Japanese or "
        "Korean characters gets a warning and is sent as typed, not translated.",
    )
    gen.add_argument("prompt", help="what the music should sound like, in English")
    gen.add_argument("-d", "--duration", type=float, default=10.0, help="seconds of audio (default 10)")
    gen.add_argument("-o", "--out", help="output file (.wav .flac .ogg .mp3); default: from the prompt, .wav")
    gen.add_argument("--format", choices=("wav", "flac", "ogg", "mp3"), help="file format (default: by extension)")
    s = gen.add_argument_group("sampling (server defaults when omitted)")
    s.add_argument("--top-k", type=int, help="keep the k most likely tokens (default 250, 0 = off, 1 = greedy)")
    s.add_argument("--top-p", type=float, help="nucleus sampling mass in [0, 1] (default 0 = off)")
    s.add_argument("--temperature", type=float, help="softmax temperature in (0, 100] (default 1)")
    s.add_argument("--guidance-scale", type=float, help="classifier-free guidance in [1, 100] (default 3)")
    s.add_argument("--seed", type=int, help="random seed in [0, 2^63) to reproduce a clip (default random)")
    s.add_argument("--melody", metavar="FILE", help="a tune to follow (WAV/FLAC/OGG/MP3; melody models only)")
    s.add_argument(
        "--continue-from",
        metavar="FILE",
        help="an audio file to continue (WAV/FLAC/OGG/MP3): the output starts with it and "
        "--duration seconds of new music follow",
    )
    o = gen.add_argument_group("output")
    o.add_argument(
        "--normalize",
        choices=NORMALIZE,
        default="loudness",
        help="loudness: -14 LUFS with a -1 dBFS peak ceiling (default); peak: -1 dBFS; "
        "rms: -18 dBFS; clip; none: the raw model output",
    )
    o.add_argument(
        "--compressor",
        action="store_true",
        help="with --normalize loudness: tanh soft clipping instead of the peak ceiling",
    )
    o.add_argument("--codes-out", metavar="FILE.npy", help="also save the audio codes [codebooks, frames]")
    st = gen.add_argument_group("progress")
    st.add_argument(
        "--no-stream", action="store_true", help="one unary request instead of gRPC streaming (no progress bar)"
    )
    st.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    st.add_argument("-q", "--quiet", action="store_true", help="no progress, no warnings")

    h = sub.add_parser(
        "health",
        parents=[conn],
        help="check the server with a real small inference",
        description="Liveness, readiness, the manifest, and a real 0.1 s generation "
        "(/v2/health/ready alone stays 200 when a model's process died).",
    )
    h.add_argument("--no-generate", action="store_true", help="skip the test generation (only the manifest call)")

    sub.add_parser(
        "models",
        parents=[conn],
        help="list the server's models and the exported checkpoint",
        description="The repository index and the export manifest (checkpoint, precision, random weights).",
    )
    return p


# ------------------------------------------------------------------------------------------------
# progress display
# ------------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar with elapsed time and ETA (streaming) or a spinner (unary) on stderr.

    The ETA is the web page's (musicgen_runtime.progress): measured from the stream's progress events.
    """

    def __init__(self, enabled: bool, label: str = "generating"):
        self.enabled = enabled
        self.label = label
        self.t0 = time.monotonic()
        self.clock = eta_clock.Progress(started=self.t0)
        self._spin: threading.Thread | None = None
        self._stop = threading.Event()
        self._last = 0.0
        self._width = 0

    def _write(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self._width = len(text)
        sys.stderr.write("\r" + text + " " * pad)
        sys.stderr.flush()

    def update(self, event: StreamEvent) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        self.clock.update(now, event.frames_done, event.frames_total)
        if event.kind == "progress" and now - self._last < 0.1 and event.frames_done < event.frames_total:
            return
        self._last = now
        frac = event.fraction
        bar = "#" * int(frac * 30)
        eta = self.clock.eta(now)
        eta_s = "?" if eta is None else eta_clock.format_clock(eta)  # ASCII: any terminal encoding
        self._write(
            f"{self.label} [{bar:<30}] {frac * 100:5.1f}% {event.frames_done}/{event.frames_total} frames "
            f"{now - self.t0:6.1f}s ETA {eta_s}"
        )

    def spinner(self) -> None:
        if not self.enabled:
            return

        def run():
            for ch in itertools.cycle("|/-\\"):
                if self._stop.wait(0.2):
                    return
                self._write(f"{self.label} {ch} {time.monotonic() - self.t0:6.1f}s")

        self._spin = threading.Thread(target=run, daemon=True)
        self._spin.start()

    def close(self) -> None:
        self._stop.set()
        if self._spin is not None:
            self._spin.join()
        if self.enabled and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------


def _default_out(prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].strip("-")
    return f"{slug or 'musicgen'}.wav"


def cmd_generate(args, client: MusicGenClient) -> int:
    from musicgen_runtime import audio_io

    out = Path(args.out or _default_out(args.prompt))
    try:  # fail before a long generation, not after
        audio_io.format_for(out, args.format)
    except audio_io.AudioFormatError as exc:
        raise InvalidParameter(str(exc)) from None
    if out.parent and not out.parent.exists():
        raise InvalidParameter(f"output directory {out.parent} does not exist")
    params = dict(
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
    )
    client.validate(args.prompt, args.duration, **params)
    language_warning = prompt_language.warning_for(args.prompt)
    if language_warning and not args.quiet:
        _err(f"warning: {language_warning}")
    melody = client.prepare_melody(args.melody) if args.melody else None  # unreadable file: fail now
    params["audio_prompt"] = client.prepare_audio_prompt(args.continue_from) if args.continue_from else None

    stream = client.protocol == "grpc" and not args.no_stream
    show = not args.quiet and (args.progress or sys.stderr.isatty())
    progress = Progress(show)
    try:
        if stream:
            result = client.generate(
                args.prompt, args.duration, stream=True, on_event=progress.update, melody=melody, **params
            )
        else:
            progress.spinner()
            result = client.generate(args.prompt, args.duration, melody=melody, **params)
    finally:
        progress.close()

    try:
        path = result.save(out, format=args.format, normalize=args.normalize, compressor=args.compressor)
        if args.codes_out:
            import numpy as np

            np.save(args.codes_out, result.codes)
    except OSError as exc:
        raise MusicGenError(f"cannot write {out}: {exc.strerror or exc}") from None

    random_weights = None
    if not args.quiet or args.json:
        try:
            random_weights = client.is_random_weights()
        except MusicGenError:
            pass
    summary = {
        "path": str(path),
        "prompt": result.prompt,
        "duration": round(result.duration, 4),
        "sample_rate": result.sample_rate,
        "channels": result.channels,
        "frames": int(result.codes.shape[-1]),
        "prompt_frames": result.prompt_frames,
        "seed_used": result.seed_used,
        "top_k": result.params.top_k,
        "top_p": result.params.top_p,
        "temperature": result.params.temperature,
        "guidance_scale": result.params.guidance_scale,
        "elapsed": round(result.elapsed, 4),
        "rtf": round(result.rtf, 4),
        "time_to_first_chunk": None if result.time_to_first_chunk is None else round(result.time_to_first_chunk, 4),
        "streamed": stream,
        "normalize": args.normalize,
        "random_weights": random_weights,
        "codes_path": args.codes_out,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        ch = {1: "mono", 2: "stereo"}.get(result.channels, f"{result.channels} ch")
        print(
            f"wrote {path}: {result.duration:.2f} s, {result.sample_rate} Hz {ch}, seed {result.seed_used} "
            f"({result.elapsed:.1f} s, real-time factor {result.rtf:.2f})"
        )
    if random_weights and not args.quiet:
        _err("warning: the server's checkpoint has RANDOM weights: this is noise, not music")
    return EXIT_OK


def cmd_health(args, client: MusicGenClient) -> int:
    rep = client.health(generate=not args.no_generate)
    if args.json:
        print(json.dumps(rep.as_dict()))
    if rep.ok:
        if not args.json:
            m = rep.manifest or {}
            gen = f", test generation {rep.generation_seconds:.2f} s" if rep.generation_ok else ""
            print(
                f"ok: {client.url} serves {m.get('source', '?')} ({m.get('precision', '?')})"
                f"{' with RANDOM weights' if rep.random_weights else ''}{gen}"
            )
        return EXIT_OK
    _err(f"unhealthy: {rep.error}")
    if rep.error_kind in ("AuthenticationError", "TLSError"):
        return EXIT_ACCESS
    return EXIT_UNAVAILABLE if rep.error_kind in ("ServerUnavailable", "ModelNotReady") else EXIT_FAIL


def cmd_models(args, client: MusicGenClient) -> int:
    models = client.models()
    try:
        manifest = client.info()
    except ModelNotReady as exc:
        manifest, info_error = None, exc.message
    else:
        info_error = None
    if args.json:
        print(json.dumps({"models": models, "manifest": manifest}))
    else:
        w = max([len(m["name"]) for m in models] + [5])
        print(f"{'model':<{w}}  version  state")
        for m in models:
            reason = f"  ({m['reason']})" if m.get("reason") else ""
            print(f"{m['name']:<{w}}  {m['version'] or '-':<7}  {m['state'] or '-'}{reason}")
        if manifest:
            d = manifest.get("dims", {})
            print()
            print(f"checkpoint:     {manifest.get('source')} ({manifest.get('source_kind')})")
            print(f"random weights: {'YES: noise, not music' if manifest.get('random_weights') else 'no'}")
            print(f"precision:      {manifest.get('precision')}")
            if d:
                print(
                    f"audio:          {d.get('sample_rate')} Hz, {d.get('audio_channels')} ch, "
                    f"{d.get('frame_rate')} frames/s, {d.get('num_codebooks')} codebooks"
                )
                print(f"language model: {d.get('num_layers')} layers, hidden {d.get('hidden_size')}")
            print(f"exported at:    {manifest.get('exported_at')}")
    if info_error:
        _err(f"no manifest: {info_error}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    warnings.simplefilter("ignore", prompt_language.PromptLanguageWarning)  # cmd_generate says it once
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        client = MusicGenClient(
            args.url,
            args.protocol,
            timeout=args.timeout,
            connect_timeout=min(10.0, args.timeout),
            token=args.token or os.environ.get("MUSICGEN_API_TOKEN") or None,
            ca_bundle=args.ca_bundle,
            tls=args.tls or None,
        )
        with client:
            return {"generate": cmd_generate, "health": cmd_health, "models": cmd_models}[args.command](args, client)
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except MusicGenError as exc:
        _err(exc.message)
        return exit_code(exc)
    except Exception as exc:  # a bug or an unexpected environment: one line, not a traceback
        _err(f"unexpected error: {type(exc).__name__}: {exc} (set MUSICGEN_DEBUG=1 for a traceback)")
        if os.environ.get("MUSICGEN_DEBUG"):
            raise
        return EXIT_FAIL


if __name__ == "__main__":  # python -m client.cli
    sys.exit(main())
