"""Continuous-batching LM engine: text states + sampling parameters -> audio codes (streamed progress)."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from musicgen_runtime import chroma, delay, manifest, triton_io
from musicgen_runtime.lm import FEW_ROWS, LanguageModel
from musicgen_runtime.melody_lm import MelodyLanguageModel, is_melody
from musicgen_runtime.scheduler import Job, Scheduler
from musicgen_runtime.validation import ValidationError, validate_params

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        d = triton_io.model_dir(args)
        params = triton_io.parameters(args)
        man = manifest.read(d)
        self.melody = is_melody(man)
        dims = manifest.dims(man)
        limit = (dims.max_positions - 1 - dims.num_codebooks) / dims.frame_rate
        self.max_duration = min(float(params.get("max_duration") or 30), limit)
        max_active = int(params.get("max_active") or 16)
        # the KV cache is sized once: every request's rows (CFG: 2) at the longest duration
        steps = delay.num_steps(delay.frames_for_duration(self.max_duration, dims.frame_rate),
                                dims.num_codebooks, dims.audio_channels)
        model = MelodyLanguageModel if self.melody else LanguageModel
        # few_rows: steps of up to this many rows run an int8 export's blockwise graph (0: never load it)
        self.lm = model(d, device=triton_io.device(args), max_rows=2 * max_active, max_steps=steps,
                        few_rows=int(params.get("few_rows") or FEW_ROWS))
        self.dims = self.lm.dims
        c = self.lm.cache
        print(f"lm_engine: KV cache {c.max_rows} rows x {c.capacity} positions, {c.nbytes / 2**30:.2f} GiB "
              f"({'allocated on the GPU' if c.device == 'cuda' else 'reserved; pages used as written'})", flush=True)
        self.max_melody_samples = int(float(params.get("max_melody_seconds") or 60) * 48000 * 2)
        # the metrics exist before the scheduler starts: its thread reports at once
        self._reported = {}
        # Prometheus metrics of the engine, next to Triton's own on the metrics endpoint
        self._families = [
            pb_utils.MetricFamily("musicgen_lm_requests_in_flight", "requests queued or generating",
                                  pb_utils.MetricFamily.GAUGE),
            pb_utils.MetricFamily("musicgen_lm_requests_finished_total", "requests ended, by outcome",
                                  pb_utils.MetricFamily.COUNTER),
            pb_utils.MetricFamily("musicgen_lm_frames_total", "audio frames generated", pb_utils.MetricFamily.COUNTER),
            # the supervisor's watchdog (server/supervisor.py): stale while a step hangs or the thread is dead
            pb_utils.MetricFamily("musicgen_lm_heartbeat_timestamp_seconds", "unix time the engine thread last looped",
                                  pb_utils.MetricFamily.GAUGE),
        ]
        self.in_flight = self._families[0].Metric(labels={})
        self.outcome = {k: self._families[1].Metric(labels={"outcome": k}) for k in ("ok", "error", "cancelled")}
        self.frames = self._families[2].Metric(labels={})
        self.heartbeat = self._families[3].Metric(labels={})
        self.scheduler = Scheduler(self.lm, max_active=max_active, on_report=self._report)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            cancel = pb_utils.get_input_tensor_by_name(request, "cancel_request_id")
            if cancel is not None:
                found = self.scheduler.cancel(cancel.as_numpy().reshape(-1)[0].decode())
                sender.send(pb_utils.InferenceResponse([
                    pb_utils.Tensor("event", np.array([b"cancel_sent" if found else b"cancel_unknown"], dtype=object))]),
                    flags=FINAL)
                continue
            try:
                job = self._job(request, sender)
            except Exception as exc:
                sender.send(triton_io.error_response(pb_utils, exc), flags=FINAL)
                continue
            self.scheduler.submit(job)
        return None

    def _report(self, stats):
        """Runs on the engine thread only (see Scheduler): gauge set, counters advanced by their deltas."""
        self.heartbeat.set(time.time())
        self.in_flight.set(stats["in_flight"])
        for key, metric in [*self.outcome.items(), ("frames", self.frames)]:
            delta = stats[key] - self._reported.get(key, 0)
            if delta:
                metric.increment(delta)
        self._reported = stats

    def _job(self, request, sender):
        get = lambda n: triton_io.scalar(pb_utils, request, n)  # noqa: E731
        p = validate_params(triton_io.scalar(pb_utils, request, "duration", required=True), *(get(n) for n in triton_io.PARAM_NAMES),
                            max_duration=self.max_duration, vocab_size=self.dims.vocab_size)
        states = triton_io.array(pb_utils, request, "encoder_hidden_states")
        mask = triton_io.array(pb_utils, request, "attention_mask")
        if states.ndim != 2 or states.shape[1] != self.dims.hidden_size or mask.shape != states.shape[:1]:
            raise ValidationError(f"encoder_hidden_states must be [T, {self.dims.hidden_size}] with a [T] mask")
        frames = delay.frames_for_duration(p.duration, self.dims.frame_rate)
        melody = self._melody(request)
        if self.melody:
            limit = self.lm.max_frames(int(mask.sum()))
            if frames > limit:
                raise ValidationError(f"duration too long for this prompt: at most {limit / self.dims.frame_rate:.1f} s")
            seq = self.lm.prepare(states, mask, melody, p, frames)
        else:
            seq = self.lm.prepare(states, mask, p, frames)
        every = int(get("progress_every") or 0)

        def respond(event, s, codes=None):
            outs = [pb_utils.Tensor("event", np.array([event.encode()], dtype=object)),
                    pb_utils.Tensor("frames_done", np.array([s.frames_ready], np.int32)),
                    pb_utils.Tensor("frames_total", np.array([s.frames], np.int32)),
                    pb_utils.Tensor("seed_used", np.array([s.params.seed], np.int64))]
            if codes is not None:
                outs.append(pb_utils.Tensor("audio_codes", codes))
            return pb_utils.InferenceResponse(outs)

        return Job(
            seq=seq,
            on_done=lambda s: sender.send(respond("final", s, s.codes()), flags=FINAL),
            on_error=lambda s, e: sender.send(triton_io.error_response(pb_utils, e), flags=FINAL),
            on_progress=lambda s: sender.send(respond("progress", s, s.codes(s.frames_ready))),
            progress_every=every,
            is_cancelled=getattr(request, "is_cancelled", None),
            key=request.request_id() or None,
        )

    def _melody(self, request):
        """Chroma of the request's melody, or None. A text-only model refuses a melody clearly."""
        t = pb_utils.get_input_tensor_by_name(request, "melody")
        if t is None:
            return None
        if not self.melody:
            raise ValidationError("this model (a text-only MusicGen) does not take a melody: "
                                  "send the prompt alone, or serve a MusicGen-Melody checkpoint")
        rate = triton_io.scalar(pb_utils, request, "melody_sample_rate")
        if rate is None:
            raise ValidationError("melody_sample_rate is required with a melody")
        wave = t.as_numpy()
        if wave.size > self.max_melody_samples:
            raise ValidationError(f"melody is too large ({wave.size} samples); send at most "
                                  f"{self.lm.chroma_config.chunk_length:g} s (only that much is used)")
        try:
            return chroma.chroma(wave, rate, self.lm.chroma_config)
        except chroma.MelodyInputError as exc:
            raise ValidationError(str(exc)) from None

    def finalize(self):
        self.scheduler.close()
        del self.in_flight, self.outcome, self.frames, self.heartbeat  # metrics before their families
        self._families.clear()
