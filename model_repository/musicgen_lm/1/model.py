"""musicgen_lm: the ensemble's LM stage, a thin unary front of lm_engine (which generates): one request in,
its final codes out (BLS, decoupled call)."""

import triton_python_backend_utils as pb_utils

from musicgen_runtime import triton_io

INPUTS = ("encoder_hidden_states", "attention_mask") + triton_io.FORWARDED_NAMES
OUTPUTS = ("audio_codes", "seed_used", "prompt_frames")


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = [t for t in (pb_utils.get_input_tensor_by_name(request, n) for n in INPUTS) if t is not None]
                bls = pb_utils.InferenceRequest(
                    model_name="lm_engine", inputs=inputs, requested_output_names=list(OUTPUTS)
                )
                final = None
                for resp in bls.exec(decoupled=True):
                    triton_io.raise_for_error(resp)
                    if pb_utils.get_output_tensor_by_name(resp, "audio_codes") is not None:
                        final = resp
                if final is None:
                    raise RuntimeError("lm_engine ended without codes")
                responses.append(
                    pb_utils.InferenceResponse([pb_utils.get_output_tensor_by_name(final, n) for n in OUTPUTS])
                )
            except Exception as exc:
                responses.append(triton_io.error_response(pb_utils, exc))
        return responses
