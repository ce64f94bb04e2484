"""input_ids, attention_mask -> projected text states (text_encoder.onnx)."""

import triton_python_backend_utils as pb_utils

from musicgen_runtime import names, triton_io
from musicgen_runtime.text import TextEncoder


class TritonPythonModel:
    def initialize(self, args):
        self.encoder = TextEncoder(triton_io.model_dir(args) / names.TEXT_ENCODER_FILE, triton_io.device(args))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                ids = triton_io.array(pb_utils, request, "input_ids")[None]
                mask = triton_io.array(pb_utils, request, "attention_mask")[None]
                states = self.encoder(ids, mask)[0]
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("encoder_hidden_states", states)]))
            except Exception as exc:
                responses.append(triton_io.error_response(pb_utils, exc))
        return responses
