"""MusicGen web page (Streamlit). Run with `make ui` (or `streamlit run ui/app.py`).

The server is found at $MUSICGEN_TRITON_URL (gRPC host:port, default 127.0.0.1:8001). This script only
lays out widgets: the logic is in ui/logic.py and ui/media.py, the server calls in ui/backend.py, every
word shown in ui/strings.py (English and Simplified Chinese; `?lang=zh` or `?lang=en` picks one).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # `streamlit run ui/app.py` runs this file as a script, not as ui.app
    sys.path.insert(0, ROOT)

import streamlit as st

from musicgen_runtime import delay, prompt_language
from musicgen_runtime.validation import ValidationError
from ui import backend, logic, media, strings

URL_ENV = "MUSICGEN_TRITON_URL"
DEFAULT_URL = "127.0.0.1:8001"
STATUS_TTL = 15.0  # seconds a server status is reused between reruns
HISTORY_LIMIT = 20

st.set_page_config(page_title="MusicGen", page_icon=":material/music_note:", layout="wide")

ss = st.session_state


def browser_language() -> str:
    """?lang= in the URL, else the browser's preferred language (navigator.language, Accept-Language)."""
    asked = st.query_params.get("lang")
    if asked in strings.LANGUAGES:
        return asked
    return strings.detect_language(st.context.locale, st.context.headers.get("Accept-Language"))


if "lang" not in ss:  # once per session: afterwards the switch decides
    ss.lang = browser_language()
ss.setdefault("history", [])  # [ResultEntry], newest first
ss.setdefault("assets", {})  # number -> {"audio", "rate", "files": {(fmt, normalize): bytes}, plots}
ss.setdefault("counter", 0)
ss.setdefault("last_error", None)
ss.setdefault("notice", None)
ss.setdefault("rate", None)  # frames per second of the last generation (first ETA of the next one)
ss.setdefault("prompt", "")
ss.setdefault("duration", float(logic.DURATION_DEFAULT))
ss.setdefault("top_k", 250)
ss.setdefault("top_p", 0.0)
ss.setdefault("temperature", 1.0)
ss.setdefault("guidance_scale", 3.0)
ss.setdefault("seed_mode", logic.SEED_RANDOM)
ss.setdefault("seed_text", "")
ss.setdefault("normalize", logic.NORMALIZE_DEFAULT)


def tr(key: str, **kw) -> str:
    return strings.t(key, ss.lang, **kw)


def server_url() -> str:
    return os.environ.get(URL_ENV, "").strip() or DEFAULT_URL


def get_status(force: bool = False) -> backend.ServerStatus:
    cached = ss.get("status")
    if not force and cached is not None and cached.url == server_url() and time.time() - cached.checked_at < STATUS_TTL:
        return cached
    ss.status = backend.Backend(server_url()).status()
    return ss.status


def refresh_status() -> None:
    ss.pop("status", None)


def cancel() -> None:
    """The Cancel button's click reruns the page, which stops the running generation (and its stream)."""
    ss.notice = tr("cancelled")


def use_example() -> None:
    choice = ss.get("example")
    if choice:
        ss.prompt = choice
    ss.example = None


def use_tags() -> None:
    built = strings.prompt_from_tags({c: ss.get(f"tags_{c}") or [] for c in strings.TAG_CATEGORIES})
    if built:
        ss.prompt = built


def reuse(number: int) -> None:
    """Put an earlier result's prompt and parameters (seed fixed to the one used) back into the form."""
    entry = next((e for e in ss.history if e.number == number), None)
    if entry is None:
        return
    p = entry.reproduce_params()
    ss.prompt = entry.prompt
    limit = logic.duration_limit(ss.status.max_duration if ss.get("status") else None)
    ss.duration = float(min(max(p["duration"], logic.DURATION_MIN), limit))
    ss.top_k, ss.top_p = int(p["top_k"]), float(p["top_p"])
    ss.temperature, ss.guidance_scale = float(p["temperature"]), float(p["guidance_scale"])
    ss.seed_mode, ss.seed_text = logic.SEED_FIXED, str(p["seed"])
    if entry.model in (ss.status.models if ss.get("status") else []):
        ss.model = entry.model


# ---- header and server status ------------------------------------------------------------------

status = get_status()

with st.sidebar:
    st.radio(tr("language"), strings.LANGUAGES, key="lang", format_func=strings.LANGUAGE_NAMES.get, horizontal=True)
L = ss.lang

st.title(":material/music_note: MusicGen")
st.caption(tr("caption"))

if logic.random_weights(status.manifest):  # shown whenever the server says so, ready or not
    st.error(logic.random_weights_banner(status.manifest, L), icon=":material/warning:")

with st.sidebar:
    st.header(tr("server"))
    if status.ready:
        st.success(tr("server_ready", url=status.url), icon=":material/check_circle:")
    else:
        st.error(
            tr("server_not_ready", url=status.url, error=strings.translate_detail(status.error, L)),
            icon=":material/error:",
        )
    for label, value in logic.manifest_facts(status.manifest, L):
        st.markdown(f"**{label}:** `{value}`")
    if status.ready:
        st.markdown(tr("models_line", models=", ".join(f"`{m}`" for m in status.models) or tr("none_loaded")))
    st.button(tr("check_again"), key="refresh", on_click=refresh_status, width="stretch")
    checked = time.strftime("%H:%M:%S", time.localtime(status.checked_at))
    st.caption(tr("server_caption", env=URL_ENV, checked=checked))

left, right = st.columns([5, 6], gap="large")

# ---- the form -------------------------------------------------------------------------------------


def audio_upload(key: str, enabled: bool, reason: str):
    """An audio file uploader (melody, audio prompt), greyed out with its reason when the model cannot use it."""
    uploaded = st.file_uploader(
        tr(key),
        type=list(logic.MELODY_EXTENSIONS),
        key=key,
        disabled=not enabled,
        help=reason,
        max_upload_size=logic.MAX_UPLOAD_MB,
    )
    if not enabled:
        st.caption(f":material/block: {reason}")
    return uploaded


SEED_LABELS = {logic.SEED_RANDOM: "seed_random", logic.SEED_FIXED: "seed_fixed"}

with left:
    st.selectbox(
        tr("examples"),
        logic.EXAMPLE_PROMPTS,
        index=None,
        key="example",
        format_func=lambda p, lang=L: strings.example_label(p, lang),
        help=tr("examples_help"),
        placeholder=tr("examples_placeholder"),
        on_change=use_example,
    )
    cjk_prompt = prompt_language.has_cjk(ss.prompt)
    melody_ok, melody_reason = logic.melody_support(status.manifest, L)
    continue_ok, continue_reason = logic.continuation_support(status.manifest, L)
    # A form: changing a setting while a clip is generating does not rerun (and so interrupt) the page.
    with st.form("request", border=False):
        st.text_area(
            tr("prompt"),
            key="prompt",
            height=110,
            max_chars=logic.validation.MAX_PROMPT_CHARS,
            placeholder=tr("prompt_placeholder"),
            help=tr("prompt_help"),
        )
        if cjk_prompt:  # said plainly next to the box; the prompt is still sent as typed
            st.warning(tr("prompt_language_warning"), icon=":material/translate:")
        max_seconds = logic.duration_limit(status.max_duration)  # the server's limit, not a fixed 30 s
        ss.duration = float(min(max(ss.duration, logic.DURATION_MIN), max_seconds))
        st.slider(tr("duration"), min_value=float(logic.DURATION_MIN), max_value=max_seconds, step=0.5, key="duration")
        melody_file = audio_upload("melody", melody_ok, melody_reason)
        prompt_file = audio_upload("audio_prompt", continue_ok, continue_reason)

        with st.expander(tr("advanced")):
            models = status.models or [backend.DEFAULT_MODEL]
            if ss.get("model") not in models:
                ss.model = models[0]
            st.selectbox(
                tr("model"),
                models,
                key="model",
                format_func=lambda m, lang=L: logic.model_label(m, lang),
                help=tr("model_help"),
            )
            c1, c2 = st.columns(2)
            c1.number_input("Top-k", min_value=0, max_value=10_000, step=10, key="top_k", help=tr("top_k_help"))
            c2.slider("Top-p", min_value=0.0, max_value=1.0, step=0.05, key="top_p", help=tr("top_p_help"))
            c1.number_input(
                tr("temperature"),
                min_value=0.05,
                max_value=100.0,
                step=0.05,
                key="temperature",
                help=tr("temperature_help"),
            )
            c2.number_input(
                tr("guidance"), min_value=1.0, max_value=100.0, step=0.5, key="guidance_scale", help=tr("guidance_help")
            )
            c1.radio(
                tr("seed"),
                [logic.SEED_RANDOM, logic.SEED_FIXED],
                key="seed_mode",
                horizontal=True,
                format_func=lambda m, lang=L: strings.t(SEED_LABELS[m], lang),
                help=tr("seed_help"),
            )
            c2.text_input(
                tr("fixed_seed"), key="seed_text", placeholder=tr("fixed_seed_placeholder"), help=tr("fixed_seed_help")
            )

        generate = st.form_submit_button(
            tr("generate"), type="primary", key="generate", width="stretch", icon=":material/music_note:"
        )
    # English style tags that build an English prompt (open when the prompt is not English). After the
    # form: the clicks rerun the page, and they only edit the prompt box.
    with st.expander(tr("tags_title"), expanded=cjk_prompt, icon=":material/sell:"):
        for cat in strings.TAG_CATEGORIES:
            st.pills(
                tr(f"tags_{cat}"),
                [en for en, _ in strings.STYLE_TAGS[cat]],
                selection_mode="multi",
                key=f"tags_{cat}",
                format_func=lambda tag, lang=L: strings.tag_label(tag, lang),
            )
        built = strings.prompt_from_tags({c: ss.get(f"tags_{c}") or [] for c in strings.TAG_CATEGORIES})
        st.caption(tr("tags_preview", prompt=logic.md_escape(built)) if built else tr("tags_none"))
        st.button(tr("tags_use"), key="use_tags", on_click=use_tags, disabled=not built, icon=":material/arrow_upward:")

# ---- generation -------------------------------------------------------------------------------------


def run_generation(out) -> None:
    """Validate, stream from the server with a live progress bar, and record the result (or an error)."""
    ss.last_error = ss.notice = None
    try:
        prompt, params = logic.build_request(
            ss.prompt,
            ss.duration,
            ss.top_k,
            ss.top_p,
            ss.temperature,
            ss.guidance_scale,
            ss.seed_mode,
            ss.seed_text,
            max_duration=status.max_duration or logic.DURATION_MAX,
            lang=L,
        )
    except ValidationError as exc:
        ss.last_error = tr("err_form", detail=strings.translate_detail(str(exc), L))
        return
    melody = None
    if melody_file is not None and melody_ok:
        try:
            melody = media.decode_upload(melody_file.name, melody_file.getvalue(), lang=L)
        except media.UploadError as exc:
            ss.last_error = tr("err_melody", detail=exc)
            return
    audio_prompt = None
    if prompt_file is not None and continue_ok:
        try:
            audio_prompt = media.decode_audio_prompt(
                prompt_file.name, prompt_file.getvalue(), status.window_seconds, lang=L
            )
        except media.UploadError as exc:
            ss.last_error = tr("err_audio_prompt", detail=exc)
            return

    model = ss.model
    bar = out.progress(0.0, text=tr("sending"))
    started = time.monotonic()
    prog = logic.Progress(started=started, prior_rate=ss.rate)
    cancel_slot = out.empty()
    cancel_slot.button(tr("cancel"), key="cancel", on_click=cancel, icon=":material/stop_circle:")
    job = None
    received = []  # (frames done, total) of every progress event shown: the page's record of its live progress
    try:
        job = backend.Backend(server_url()).start(
            model, prompt, params, melody=melody, audio_prompt=audio_prompt, max_duration=status.max_duration
        )
        if not job.streaming and status.frame_rate:
            prog.frames_total = delay.frames_for_duration(params.duration, status.frame_rate)
        final = None
        while final is None:
            event = job.next(timeout=0.25)
            now = time.monotonic()
            if event is not None:
                if event.kind == "final":
                    final = event
                    prog.update(now, event.frames_total, event.frames_total)
                else:
                    prog.update(now, event.frames_done, event.frames_total)
                    received.append((event.frames_done, event.frames_total))
                    if event.kind == "audio_chunk" and event.chunk is not None and status.sample_rate:
                        prog.audio_seconds = (event.chunk_start + event.chunk.shape[-1]) / status.sample_rate
            elif not job.streaming and prog.prior_rate and prog.frames_total:
                # a unary model sends no progress: advance on the last measured speed, never to 100 %
                estimate = min(int((now - started) * prog.prior_rate), int(prog.frames_total * 0.97))
                prog.update(now, estimate, prog.frames_total)
            bar.progress(prog.fraction, text=prog.text(now, L))
        elapsed = time.monotonic() - started
    except backend.BackendError as exc:
        bar.empty()
        ss.last_error = exc.user_message(L)
        if exc.kind in ("unavailable", "not_ready"):
            refresh_status()
        return
    finally:
        cancel_slot.empty()
        if job is not None:
            job.cancel()
    bar.progress(1.0, text=tr("done_in", elapsed=logic.format_seconds(elapsed, L)))
    ss.progress_received = received
    if job.streaming and prog.rate():
        ss.rate = prog.rate()
    elif not job.streaming and prog.frames_total and elapsed > 0:
        ss.rate = prog.frames_total / elapsed
    audio, rate = final.audio, final.sample_rate
    prompt_seconds = final.prompt_frames / status.frame_rate if final.prompt_frames and status.frame_rate else 0.0
    ss.counter += 1
    entry = logic.make_entry(
        ss.counter,
        prompt,
        model,
        params,
        final.seed_used,
        rate,
        audio.shape[0],
        audio.shape[-1],
        elapsed,
        prompt_seconds=prompt_seconds,
    )
    ss.assets[entry.number] = {
        "audio": audio,
        "rate": rate,
        "files": {},  # files encoded (and levelled) on first use
        "waveform": media.figure_png(media.waveform_figure(audio, rate, prompt_seconds=prompt_seconds)),
        "spectrogram": media.figure_png(media.spectrogram_figure(audio, rate, prompt_seconds=prompt_seconds)),
    }
    ss.history.insert(0, entry)
    for old in ss.history[HISTORY_LIMIT:]:
        ss.assets.pop(old.number, None)
    del ss.history[HISTORY_LIMIT:]


def show_clip(entry: logic.ResultEntry, asset: dict, where) -> None:
    """Player, parameters and downloads of one result: the player plays the WAV that is downloaded, and
    every format is levelled as the `musicgen` CLI levels its files (the `normalize` setting)."""
    norm = ss.normalize
    where.audio(media.clip_file(asset, "wav", norm), format="audio/wav")
    where.caption(f"{logic.params_summary(entry, L)}  \n{logic.timing_summary(entry, L)}")
    if entry.prompt_seconds > 0:
        where.caption(logic.continuation_summary(entry, L))
    where.caption(tr("downloads_caption", norm=tr(f"norm_{norm}")))
    stem = logic.file_stem(entry)
    for col, fmt in zip(where.columns(len(logic.DOWNLOAD_FORMATS)), logic.DOWNLOAD_FORMATS):
        if not media.format_supported(fmt):
            col.caption(tr("format_unavailable", fmt=fmt.upper()))
            continue
        # encoded only when clicked (a callable): the history's 4 formats are not all made up front
        col.download_button(
            fmt.upper(),
            lambda a=asset, f=fmt, n=norm: media.clip_file(a, f, n) or b"",
            file_name=f"{stem}.{fmt}",
            mime=MIME[fmt],
            key=f"{fmt}-{entry.number}",
            icon=":material/download:",
            width="stretch",
        )


MIME = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg"}

with right:
    st.subheader(tr("result"))
    progress_area = st.container()
    if generate:
        if not status.ready:
            refresh_status()
            status = get_status()
        try:
            run_generation(progress_area)
        except Exception as exc:  # a bug must not take the page down: say what happened
            ss.last_error = tr("err_unexpected", detail=f"{type(exc).__name__}: {exc}")
    if ss.last_error:
        st.error(ss.last_error, icon=":material/error:")
    if ss.notice:
        st.info(ss.notice, icon=":material/info:")

    if not ss.history:
        st.info(tr("empty_result"), icon=":material/headphones:")
    else:
        st.selectbox(
            tr("normalize"),
            logic.NORMALIZE_CHOICES,
            key="normalize",
            format_func=lambda n, lang=L: strings.t(f"norm_{n}", lang),
            help=tr("normalize_help"),
        )
        latest = ss.history[0]
        assets = ss.assets[latest.number]
        st.markdown(f"**#{latest.number} · {logic.md_escape(latest.prompt)}**")
        show_clip(latest, assets, st)
        # hidden: the progress events the last generation showed (a test reads it; the bar itself is brief)
        st.html(f'<div id="progress-received" hidden>{json.dumps(ss.get("progress_received", []))}</div>')
        if latest.channels == 2:
            st.caption(tr("plots_stereo"))
        st.caption(tr("waveform"))
        st.image(assets["waveform"], width="stretch")
        st.caption(tr("spectrogram"))
        st.image(assets["spectrogram"], width="stretch")
        st.button(
            tr("reuse_latest"),
            key=f"reuse-{latest.number}",
            on_click=reuse,
            args=(latest.number,),
            icon=":material/replay:",
        )

        if len(ss.history) > 1:
            st.subheader(tr("earlier"))
            for entry in ss.history[1:]:
                label = tr(
                    "history_label",
                    number=entry.number,
                    prompt=logic.md_escape(entry.prompt[:60]),
                    seed=entry.seed_used,
                )
                with st.expander(label):
                    show_clip(entry, ss.assets[entry.number], st)
                    st.button(
                        tr("reuse"),
                        key=f"reuse-{entry.number}",
                        on_click=reuse,
                        args=(entry.number,),
                        icon=":material/replay:",
                    )
