"""Streaming generation (decoupled, BLS): tokenizer -> text_encoder -> lm_engine (progress) -> audio_decoder.

Each request runs on its own worker thread, so streams proceed concurrently and the engine
batches them together.
"""

import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from musicgen_runtime import manifest, triton_io
from musicgen_runtime.streaming import ChunkPlan, Reach

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _call(model, inputs, outputs):
    resp = pb_utils.InferenceRequest(model_name=model, inputs=inputs, requested_output_names=outputs).exec()
    triton_io.raise_for_error(resp)
    return [triton_io.output(pb_utils, resp, n) for n in outputs]


def _cancel(key):
    control = pb_utils.InferenceRequest(
        model_name="lm_engine",
        requested_output_names=["event"],
        inputs=[pb_utils.Tensor("cancel_request_id", np.array([key.encode()], dtype=object))],
    )
    for _ in control.exec(decoupled=True):
        pass


class TritonPythonModel:
    def initialize(self, args):
        p = triton_io.parameters(args)
        m = manifest.read(triton_io.model_dir(args))
        self.dims = manifest.dims(m)
        rate = self.dims.frame_rate
        self.plan = ChunkPlan(
            chunk=max(1, round(float(p.get("chunk_seconds") or 1.0) * rate)),
            reach=Reach.from_manifest(m),
            first=max(1, round(float(p.get("first_chunk_seconds") or 0.5) * rate)),
            max_chunk=round(float(p.get("max_chunk_seconds") or 4.0) * rate),
        )
        self.progress_every = int(p.get("progress_every_frames") or 5)
        self.pool = ThreadPoolExecutor(max_workers=int(p.get("max_streams") or 16), thread_name_prefix="stream")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            inputs = {n: pb_utils.get_input_tensor_by_name(request, n) for n in ("prompt",) + triton_io.FORWARDED_NAMES}
            self.pool.submit(self._stream, {k: v for k, v in inputs.items() if v is not None}, sender, request)
        return None

    def _stream(self, inputs, sender, request):
        try:
            self._generate(inputs, sender, request)
        except Exception as exc:
            try:
                sender.send(triton_io.error_response(pb_utils, exc), flags=FINAL)
            except Exception:
                pass

    def _generate(self, inputs, sender, request):
        ids, mask = _call("tokenizer", [inputs["prompt"]], ["input_ids", "attention_mask"])
        (states,) = _call(
            "text_encoder",
            [pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)],
            ["encoder_hidden_states"],
        )
        lm_inputs = [
            pb_utils.Tensor("encoder_hidden_states", states),
            pb_utils.Tensor("attention_mask", mask),
            pb_utils.Tensor("progress_every", np.array([self.progress_every], np.int32)),
        ]
        lm_inputs += [t for n, t in inputs.items() if n != "prompt"]
        key = uuid.uuid4().hex
        bls = pb_utils.InferenceRequest(
            model_name="lm_engine",
            inputs=lm_inputs,
            request_id=key,
            requested_output_names=[
                "event",
                "frames_done",
                "frames_total",
                "audio_codes",
                "seed_used",
                "prompt_frames",
                "codes_start",
            ],
        )
        next_frame, chunks, clip, codec_state = 0, [], None, None
        for resp in bls.exec(decoupled=True):
            if request.is_cancelled():  # the client went away: stop the engine's work and leave.
                # No draining: once the client cancelled, the engine's final response may never reach
                # this iterator (measured: 16 streams cancelled early left every worker waiting on it).
                _cancel(key)
                sender.send(flags=FINAL)
                return
            triton_io.raise_for_error(resp)
            if pb_utils.get_output_tensor_by_name(resp, "event") is None:
                continue  # an empty closing response
            event = triton_io.output(pb_utils, resp, "event")[0].decode()
            done = int(triton_io.output(pb_utils, resp, "frames_done")[0])
            total = int(triton_io.output(pb_utils, resp, "frames_total")[0])
            codes = triton_io.output(pb_utils, resp, "audio_codes")
            if clip is None:  # the clip's codes, as the progress responses bring them in (a part each)
                clip = np.zeros((codes.shape[0], total), np.int64)
            start = int(triton_io.output(pb_utils, resp, "codes_start")[0])
            clip[:, start : start + codes.shape[1]] = codes
            seed = triton_io.output(pb_utils, resp, "seed_used")
            prompt_frames = triton_io.output(pb_utils, resp, "prompt_frames")
            sender.send(self._status("progress", done, total))
            ready = total if event == "final" else done
            for a, b in self.plan.ready_chunks(next_frame, ready, total):
                # the codec carries its state from chunk to chunk: the chunks are the clip decoded whole
                chunk_inputs = [
                    pb_utils.Tensor("audio_codes", np.ascontiguousarray(clip[:, : self.plan.reach.needed(b, total)])),
                    pb_utils.Tensor("clip_frames", np.array([total], np.int64)),
                    pb_utils.Tensor("decode_to", np.array([b], np.int64)),
                ]
                if codec_state is not None:
                    chunk_inputs.append(pb_utils.Tensor("codec_state", codec_state))
                chunk, codec_state = _call("audio_decoder", chunk_inputs, ["audio", "codec_state"])
                chunks.append(chunk)
                sender.send(
                    self._status(
                        "audio_chunk",
                        done,
                        total,
                        [
                            pb_utils.Tensor("audio_chunk", chunk),
                            pb_utils.Tensor("chunk_start", np.array([a * self.dims.hop_length], np.int64)),
                        ],
                    )
                )
                next_frame = b
            if event == "final":  # the chunks tile the clip: their concatenation is the final audio
                audio = np.concatenate(chunks, axis=-1)  # (the codec is not run a second time)
                rate = np.array([self.dims.sample_rate], np.int32)
                sender.send(
                    self._status(
                        "final",
                        total,
                        total,
                        [
                            pb_utils.Tensor("audio", audio),
                            pb_utils.Tensor("sample_rate", rate),
                            pb_utils.Tensor("audio_codes", codes),
                            pb_utils.Tensor("seed_used", seed),
                            pb_utils.Tensor("prompt_frames", prompt_frames),
                        ],
                    ),
                    flags=FINAL,
                )
                return
        raise RuntimeError("lm_engine ended without a final response")

    @staticmethod
    def _status(event, done, total, extra=()):
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor("event", np.array([event.encode()], dtype=object)),
                pb_utils.Tensor("frames_done", np.array([done], np.int32)),
                pb_utils.Tensor("frames_total", np.array([total], np.int32)),
                *extra,
            ]
        )

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
