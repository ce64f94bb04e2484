"""The LM engine: the one instance that holds the LM graphs and batches every in-flight request step by
step (continuous batching); text states + sampling parameters (+ melody, + an audio prompt to continue) -> audio
codes, progress streamed.

An audio prompt is encoded here, in process (audio_prompt.AudioPromptEncoder on this folder's
audio_encoder.onnx): its codes go nowhere but into this engine's generation, its length limit is this
engine's window, and no other model instance (a process, a round trip per request) is needed. It runs
on a worker thread of its own: a long prompt takes seconds to encode, and meanwhile this model keeps
admitting other requests (and the engine thread keeps stepping)."""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import triton_python_backend_utils as pb_utils

from musicgen_runtime import audio_prompt, chroma, delay, long_form, manifest, names, triton_io
from musicgen_runtime.engine_metrics import EngineMetrics
from musicgen_runtime.lm import PREFILL_CHUNK, GenerationRequest
from musicgen_runtime.scheduler import Job, Scheduler
from musicgen_runtime.step_graph import BLOCKWISE_INT8_MAX_ROWS
from musicgen_runtime.validation import DEFAULT_MAX_DURATION, DEFAULT_WINDOW_SECONDS, ValidationError, validate_params
from musicgen_runtime.variants import open_language_model

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        d = triton_io.model_dir(args)
        params = triton_io.parameters(args)
        dims = manifest.dims(manifest.read(d))
        device = triton_io.device(args)
        # a request may be longer than a window (long form); the KV cache holds one window per request
        self.windows = long_form.WindowConfig.from_seconds(
            params.get("window_seconds") or DEFAULT_WINDOW_SECONDS,
            params.get("extend_stride") or long_form.DEFAULT_EXTEND_STRIDE,
            dims.frame_rate,
            max_window=dims.max_positions - 1 - dims.num_codebooks,
        )
        self.max_duration = float(params.get("max_duration") or DEFAULT_MAX_DURATION)
        max_active = int(params.get("max_active") or 16)
        # the KV cache is sized once: every request's rows (CFG: 2) for one window
        steps = delay.num_steps(self.windows.window, dims.num_codebooks, dims.audio_channels)
        # steps of up to this many rows run an int8 export's blockwise-int8 step graph (0: never load it)
        blockwise = int(params.get("blockwise_int8_max_rows") or BLOCKWISE_INT8_MAX_ROWS)
        # a prompt's prefill runs this many columns per engine step, between the others' decode steps
        prefill_chunk = int(params.get("prefill_chunk_frames") or PREFILL_CHUNK)
        self.lm = open_language_model(
            d,
            device=device,
            max_rows=2 * max_active,
            max_steps=steps,
            blockwise_int8_max_rows=blockwise,
            prefill_chunk=prefill_chunk,
        )
        self.dims = self.lm.dims
        enc = d / names.AUDIO_ENCODER_FILE  # text-only exports: continuation from an audio prompt
        self.prompt_encoder, self.prompt_worker = None, None
        if enc.exists():
            self.prompt_encoder = audio_prompt.AudioPromptEncoder(enc, self.dims, device)
            self.prompt_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audio-prompt")
        c = self.lm.cache
        print(
            f"lm_engine: KV cache {c.max_rows} rows x {c.capacity} positions, {c.nbytes / 2**30:.2f} GiB "
            f"({'allocated on the GPU' if c.device == 'cuda' else 'reserved; pages used as written'})",
            flush=True,
        )
        # long clips use the melody past 30 s (each window from its time offset)
        self.max_melody_seconds = float(params.get("max_melody_seconds") or 60)
        self.max_melody_samples = int(self.max_melody_seconds * 48000 * 2)
        # the metrics exist before the scheduler starts: its thread reports on them (and only it)
        self.metrics = EngineMetrics(pb_utils, self.dims.frame_rate)
        self.scheduler = Scheduler(self.lm, max_active=max_active, on_report=self.metrics.report)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            cancel = pb_utils.get_input_tensor_by_name(request, "cancel_request_id")
            if cancel is not None:
                found = self.scheduler.cancel(cancel.as_numpy().reshape(-1)[0].decode())
                sender.send(
                    pb_utils.InferenceResponse(
                        [
                            pb_utils.Tensor(
                                "event", np.array([b"cancel_sent" if found else b"cancel_unknown"], dtype=object)
                            )
                        ]
                    ),
                    flags=FINAL,
                )
                continue
            if (
                self.prompt_worker is not None
                and pb_utils.get_input_tensor_by_name(request, audio_prompt.INPUT) is not None
            ):
                self.prompt_worker.submit(self._submit, request, sender)  # encoding the prompt: off this thread
            else:
                self._submit(request, sender)
        return None

    def _submit(self, request, sender):
        try:
            job = self._job(request, sender)
        except Exception as exc:
            sender.send(triton_io.error_response(pb_utils, exc), flags=FINAL)
            return
        self.scheduler.submit(job)

    def _job(self, request, sender):
        get = lambda n: triton_io.scalar(pb_utils, request, n)  # noqa: E731
        p = validate_params(
            triton_io.scalar(pb_utils, request, "duration", required=True),
            *(get(n) for n in triton_io.PARAM_NAMES),
            max_duration=self.max_duration,
            vocab_size=self.dims.vocab_size,
        )
        states = triton_io.array(pb_utils, request, "encoder_hidden_states")
        mask = triton_io.array(pb_utils, request, "attention_mask")
        if states.ndim != 2 or states.shape[1] != self.dims.hidden_size or mask.shape != states.shape[:1]:
            raise ValidationError(f"encoder_hidden_states must be [T, {self.dims.hidden_size}] with a [T] mask")
        rate = self.dims.frame_rate
        frames = delay.frames_for_duration(p.duration, rate)  # new music; the clip adds the prompt's
        # a window: the prompt's frames and the new ones (at least one new frame)
        window = min(self.lm.max_frames(int(mask.sum())), self.windows.window)
        prompt = self._audio_prompt(request, window - 1)
        total = frames + (0 if prompt is None else prompt.shape[1])
        if total > window and window <= self.windows.stride:
            raise ValidationError(
                f"duration too long for this prompt: at most {window / rate:.1f} s (its text leaves a window "
                "too short for long form)"
            )
        whole = total <= window
        melody = self._melody(request, whole)
        gen_request = GenerationRequest(states, mask, p, total, chroma=melody if whole else None, prompt_codes=prompt)
        try:  # a long clip's melody windows are computed now: an unusable one is refused before generating
            windows = replace(self.windows, window=window)
            seq = long_form.prepare(self.lm, gen_request, windows, None if whole else melody)
        except chroma.MelodyInputError as exc:
            raise ValidationError(str(exc)) from None
        every = int(get("progress_every") or 0)

        def respond(event, s, codes=None, start=0):
            outs = [
                pb_utils.Tensor("event", np.array([event.encode()], dtype=object)),
                pb_utils.Tensor("frames_done", np.array([s.frames_ready], np.int32)),
                pb_utils.Tensor("frames_total", np.array([s.frames], np.int32)),
                pb_utils.Tensor("seed_used", np.array([s.params.seed], np.int64)),
                pb_utils.Tensor(audio_prompt.PROMPT_FRAMES, np.array([s.prompt_frames], np.int32)),
            ]
            if codes is not None:
                outs.append(pb_utils.Tensor("audio_codes", np.ascontiguousarray(codes)))
                outs.append(pb_utils.Tensor("codes_start", np.array([start], np.int32)))
            return pb_utils.InferenceResponse(outs)

        sent = [0]  # clip frames already sent: a progress response carries only the frames after them

        def progress(s):
            ready = s.frames_ready
            sender.send(respond("progress", s, s.codes(ready)[:, sent[0] :], start=sent[0]))
            sent[0] = ready

        return Job(
            seq=seq,
            on_done=lambda s: sender.send(respond("final", s, s.codes()), flags=FINAL),
            on_error=lambda s, e: sender.send(triton_io.error_response(pb_utils, e), flags=FINAL),
            on_progress=progress,
            progress_every=every,
            is_cancelled=getattr(request, "is_cancelled", None),
            key=request.request_id() or None,
        )

    def _melody(self, request, whole: bool):
        """The request's melody, or None: its chroma (`whole`: the clip fits one window), else a
        LoopedMelody for long form. A text-only model refuses a melody clearly."""
        t = pb_utils.get_input_tensor_by_name(request, "melody")
        if t is None:
            return None
        if self.lm.chroma_config is None:
            raise ValidationError(
                "this model (a text-only MusicGen) does not take a melody: "
                "send the prompt alone, or serve a MusicGen-Melody checkpoint"
            )
        rate = triton_io.scalar(pb_utils, request, "melody_sample_rate")
        if rate is None:
            raise ValidationError("melody_sample_rate is required with a melody")
        wave = t.as_numpy()
        if wave.size > self.max_melody_samples:
            raise ValidationError(
                f"melody is too large ({wave.size} samples); send at most {self.max_melody_seconds:g} s "
                "(48 kHz stereo at most)"
            )
        try:
            if whole:  # one window: the melody's chroma as is
                return chroma.chroma(wave, rate, self.lm.chroma_config)
            return long_form.LoopedMelody(wave, rate, self.lm.chroma_config)  # each window's, from its offset
        except chroma.MelodyInputError as exc:
            raise ValidationError(str(exc)) from None

    def _audio_prompt(self, request, max_frames: int):
        """Codes [K, P] of the request's audio prompt, or None. A model without the encoder refuses it clearly."""
        t = pb_utils.get_input_tensor_by_name(request, audio_prompt.INPUT)
        if t is None:
            return None
        if self.prompt_encoder is None:
            raise ValidationError(
                f"this model does not take an {audio_prompt.INPUT}: its export has no audio "
                "encoder (MusicGen-Melody checkpoints continue no audio prompt)"
            )
        rate = triton_io.scalar(pb_utils, request, audio_prompt.RATE_INPUT)
        if rate is None:
            raise ValidationError(f"{audio_prompt.RATE_INPUT} is required with an {audio_prompt.INPUT}")
        try:
            return self.prompt_encoder(t.as_numpy(), rate, max_frames)
        except chroma.AudioInputError as exc:
            raise ValidationError(str(exc)) from None

    def finalize(self):
        if self.prompt_worker is not None:
            self.prompt_worker.shutdown(wait=False, cancel_futures=True)
        self.scheduler.close()
        self.metrics.close()
