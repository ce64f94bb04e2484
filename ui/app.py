"""MusicGen web page (Streamlit). Run with `make ui` (or `streamlit run ui/app.py`).

The server is found at $MUSICGEN_TRITON_URL (gRPC host:port, default 127.0.0.1:8001). This script only
lays out widgets: the logic is in ui/logic.py and ui/media.py, the server calls in ui/backend.py.
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

from musicgen_runtime import delay
from musicgen_runtime.validation import ValidationError
from ui import backend, logic, media

URL_ENV = "MUSICGEN_TRITON_URL"
DEFAULT_URL = "127.0.0.1:8001"
STATUS_TTL = 15.0  # seconds a server status is reused between reruns
HISTORY_LIMIT = 20

st.set_page_config(page_title="MusicGen", page_icon=":material/music_note:", layout="wide")

ss = st.session_state
ss.setdefault("history", [])      # [ResultEntry], newest first
ss.setdefault("assets", {})       # number -> {"wav", "mp3", "waveform", "spectrogram"}
ss.setdefault("counter", 0)
ss.setdefault("last_error", None)
ss.setdefault("notice", None)
ss.setdefault("rate", None)       # frames per second of the last generation (first ETA of the next one)
ss.setdefault("prompt", "")
ss.setdefault("duration", float(logic.DURATION_DEFAULT))
ss.setdefault("top_k", 250)
ss.setdefault("top_p", 0.0)
ss.setdefault("temperature", 1.0)
ss.setdefault("guidance_scale", 3.0)
ss.setdefault("seed_mode", logic.SEED_RANDOM)
ss.setdefault("seed_text", "")


def server_url() -> str:
    return os.environ.get(URL_ENV, "").strip() or DEFAULT_URL


def get_status(force: bool = False) -> backend.ServerStatus:
    cached = ss.get("status")
    if (not force and cached is not None and cached.url == server_url()
            and time.time() - cached.checked_at < STATUS_TTL):
        return cached
    ss.status = backend.Backend(server_url()).status()
    return ss.status


def refresh_status() -> None:
    ss.pop("status", None)


def cancel() -> None:
    """The Cancel button's click reruns the page, which stops the running generation (and its stream)."""
    ss.notice = "Generation cancelled."


def use_example() -> None:
    choice = ss.get("example")
    if choice:
        ss.prompt = choice
    ss.example = None


def reuse(number: int) -> None:
    """Put an earlier result's prompt and parameters (seed fixed to the one used) back into the form."""
    entry = next((e for e in ss.history if e.number == number), None)
    if entry is None:
        return
    p = entry.reproduce_params()
    ss.prompt = entry.prompt
    ss.duration = float(min(max(p["duration"], logic.DURATION_MIN), logic.DURATION_MAX))
    ss.top_k, ss.top_p = int(p["top_k"]), float(p["top_p"])
    ss.temperature, ss.guidance_scale = float(p["temperature"]), float(p["guidance_scale"])
    ss.seed_mode, ss.seed_text = logic.SEED_FIXED, str(p["seed"])
    if entry.model in (ss.status.models if ss.get("status") else []):
        ss.model = entry.model


# ---- header and server status ------------------------------------------------------------------

status = get_status()

st.title(":material/music_note: MusicGen")
st.caption("Describe the music you want, pick a length, and press Generate. Progress shows live.")

if logic.random_weights(status.manifest):  # shown whenever the server says so, ready or not
    st.error(logic.RANDOM_WEIGHTS_BANNER.format(ckpt=logic.checkpoint_label(status.manifest)),
             icon=":material/warning:")

with st.sidebar:
    st.header("Server")
    if status.ready:
        st.success(f"Ready · {status.url}", icon=":material/check_circle:")
    else:
        st.error(f"Not ready · {status.url}\n\n{status.error}", icon=":material/error:")
    for label, value in logic.manifest_facts(status.manifest):
        st.markdown(f"**{label}:** `{value}`")
    if status.ready:
        st.markdown(f"**Models:** {', '.join(f'`{m}`' for m in status.models) or 'none loaded'}")
    st.button("Check again", key="refresh", on_click=refresh_status, width="stretch")
    checked = time.strftime("%H:%M:%S", time.localtime(status.checked_at))
    st.caption(f"Server address from ${URL_ENV} (gRPC host:port). Checked at {checked}.")

left, right = st.columns([5, 6], gap="large")

# ---- the form -------------------------------------------------------------------------------------

with left:
    st.selectbox("Example prompts", logic.EXAMPLE_PROMPTS, index=None, key="example",
                 placeholder="Pick an example to start from…", on_change=use_example)
    melody_ok, melody_reason = logic.melody_support(status.manifest)
    # A form: changing a setting while a clip is generating does not rerun (and so interrupt) the page.
    with st.form("request", border=False):
        st.text_area("Prompt", key="prompt", height=110, max_chars=logic.validation.MAX_PROMPT_CHARS,
                     placeholder="e.g. lo-fi hip hop beat with mellow piano, 75 bpm")
        max_seconds = float(max(logic.DURATION_MIN, min(logic.DURATION_MAX, status.max_duration or 0)))
        ss.duration = float(min(max(ss.duration, logic.DURATION_MIN), max_seconds))
        st.slider("Duration (seconds)", min_value=float(logic.DURATION_MIN), max_value=max_seconds, step=0.5,
                  key="duration")
        melody_file = st.file_uploader("Melody (optional)", type=list(logic.MELODY_EXTENSIONS), key="melody",
                                       disabled=not melody_ok, help=melody_reason,
                                       max_upload_size=logic.MAX_UPLOAD_MB)
        if not melody_ok:
            st.caption(f":material/block: {melody_reason}")

        with st.expander("Advanced settings"):
            models = status.models or [backend.DEFAULT_MODEL]
            if ss.get("model") not in models:
                ss.model = models[0]
            st.selectbox("Model", models, key="model", format_func=logic.model_label,
                         help="The generation models the server has loaded.")
            c1, c2 = st.columns(2)
            c1.number_input("Top-k", min_value=0, max_value=10_000, step=10, key="top_k",
                            help="Sample among the k most likely tokens; 0 = off, 1 = greedy.")
            c2.slider("Top-p", min_value=0.0, max_value=1.0, step=0.05, key="top_p",
                      help="Nucleus sampling: keep the most likely tokens up to this probability mass; 0 = off.")
            c1.number_input("Temperature", min_value=0.05, max_value=100.0, step=0.05, key="temperature",
                            help="Higher = more varied, lower = more conservative.")
            c2.number_input("Guidance scale", min_value=1.0, max_value=100.0, step=0.5, key="guidance_scale",
                            help="Classifier-free guidance: how closely to follow the prompt (1 = none).")
            c1.radio("Seed", [logic.SEED_RANDOM, logic.SEED_FIXED], key="seed_mode", horizontal=True,
                     help="Every result shows the seed it used: fix it to reproduce that result.")
            c2.text_input("Fixed seed", key="seed_text", placeholder="a whole number, e.g. 42",
                          help="Used when Seed is Fixed: 0 to 2^63-1.")

        generate = st.form_submit_button("Generate", type="primary", key="generate", width="stretch",
                                         icon=":material/music_note:")

# ---- generation -------------------------------------------------------------------------------------


def run_generation(out) -> None:
    """Validate, stream from the server with a live progress bar, and record the result (or an error)."""
    ss.last_error = ss.notice = None
    try:
        prompt, params = logic.build_request(ss.prompt, ss.duration, ss.top_k, ss.top_p, ss.temperature,
                                             ss.guidance_scale, ss.seed_mode, ss.seed_text,
                                             max_duration=status.max_duration or logic.DURATION_MAX)
    except ValidationError as exc:
        ss.last_error = f"Check the form: {exc}"
        return
    melody = None
    if melody_file is not None and melody_ok:
        try:
            melody = media.decode_upload(melody_file.name, melody_file.getvalue())
        except media.UploadError as exc:
            ss.last_error = f"Melody upload: {exc}"
            return

    model = ss.model
    bar = out.progress(0.0, text="Sending the request…")
    started = time.monotonic()
    prog = logic.Progress(started=started, prior_rate=ss.rate)
    cancel_slot = out.empty()
    cancel_slot.button("Cancel", key="cancel", on_click=cancel, icon=":material/stop_circle:")
    job = None
    received = []  # (frames done, total) of every progress event shown: the page's record of its live progress
    try:
        job = backend.Backend(server_url()).start(model, prompt, params, melody=melody,
                                                  max_duration=status.max_duration)
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
            bar.progress(prog.fraction, text=prog.text(now))
        elapsed = time.monotonic() - started
    except backend.BackendError as exc:
        bar.empty()
        ss.last_error = exc.user_message()
        if exc.kind in ("unavailable", "not_ready"):
            refresh_status()
        return
    finally:
        cancel_slot.empty()
        if job is not None:
            job.cancel()
    bar.progress(1.0, text=f"Done in {logic.format_seconds(elapsed)}")
    ss.progress_received = received
    if job.streaming and prog.rate():
        ss.rate = prog.rate()
    elif not job.streaming and prog.frames_total and elapsed > 0:
        ss.rate = prog.frames_total / elapsed
    audio, rate = final.audio, final.sample_rate
    ss.counter += 1
    entry = logic.make_entry(ss.counter, prompt, model, params, final.seed_used, rate,
                             audio.shape[0], audio.shape[-1], elapsed)
    ss.assets[entry.number] = {
        "wav": media.encode(audio, rate, "wav"),
        "mp3": media.try_encode(audio, rate, "mp3") if media.mp3_supported() else None,
        "waveform": media.figure_png(media.waveform_figure(audio, rate)),
        "spectrogram": media.figure_png(media.spectrogram_figure(audio, rate)),
    }
    ss.history.insert(0, entry)
    for old in ss.history[HISTORY_LIMIT:]:
        ss.assets.pop(old.number, None)
    del ss.history[HISTORY_LIMIT:]


def show_downloads(entry: logic.ResultEntry, assets: dict, where) -> None:
    stem = logic.file_stem(entry)
    c1, c2 = where.columns(2)
    c1.download_button("WAV", assets["wav"], file_name=f"{stem}.wav", mime="audio/wav", key=f"wav-{entry.number}",
                       icon=":material/download:", width="stretch")
    if assets.get("mp3"):
        c2.download_button("MP3", assets["mp3"], file_name=f"{stem}.mp3", mime="audio/mpeg",
                           key=f"mp3-{entry.number}", icon=":material/download:", width="stretch")
    else:
        c2.caption("MP3 is not available on this host (no MP3 encoder).")


with right:
    st.subheader("Result")
    progress_area = st.container()
    if generate:
        if not status.ready:
            refresh_status()
            status = get_status()
        try:
            run_generation(progress_area)
        except Exception as exc:  # a bug must not take the page down: say what happened
            ss.last_error = f"Unexpected error: {type(exc).__name__}: {exc}"
    if ss.last_error:
        st.error(ss.last_error, icon=":material/error:")
    if ss.notice:
        st.info(ss.notice, icon=":material/info:")

    if not ss.history:
        st.info("Your music will appear here: audio player, waveform, spectrogram and downloads.",
                icon=":material/headphones:")
    else:
        latest = ss.history[0]
        assets = ss.assets[latest.number]
        st.markdown(f"**#{latest.number} · {logic.md_escape(latest.prompt)}**")
        st.audio(assets["wav"], format="audio/wav")
        # hidden: the progress events the last generation showed (a test reads it; the bar itself is brief)
        st.html(f'<div id="progress-received" hidden>{json.dumps(ss.get("progress_received", []))}</div>')
        st.caption(f"{logic.params_summary(latest)}  \n{logic.timing_summary(latest)}")
        show_downloads(latest, assets, st)
        st.image(assets["waveform"], width="stretch")
        st.image(assets["spectrogram"], width="stretch")
        st.button("Reuse these settings (same seed)", key=f"reuse-{latest.number}", on_click=reuse,
                  args=(latest.number,), icon=":material/replay:")

        if len(ss.history) > 1:
            st.subheader("Earlier results")
            for entry in ss.history[1:]:
                with st.expander(f"#{entry.number} · {logic.md_escape(entry.prompt[:60])} · seed {entry.seed_used}"):
                    a = ss.assets[entry.number]
                    st.audio(a["wav"], format="audio/wav")
                    st.caption(f"{logic.params_summary(entry)}  \n{logic.timing_summary(entry)}")
                    show_downloads(entry, a, st)
                    st.button("Reuse these settings", key=f"reuse-{entry.number}", on_click=reuse,
                              args=(entry.number,), icon=":material/replay:")
