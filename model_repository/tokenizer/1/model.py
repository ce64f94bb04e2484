"""prompt (BYTES) -> input_ids, attention_mask, with the prompt validated."""

import triton_python_backend_utils as pb_utils

from musicgen_runtime import manifest, names, triton_io
from musicgen_runtime.text import PromptTokenizer
from musicgen_runtime.validation import validate_prompt


class TritonPythonModel:
    def initialize(self, args):
        d = triton_io.model_dir(args)
        dims = manifest.dims(manifest.read(d))
        self.tok = PromptTokenizer(d / names.TOKENIZER_FILE, dims.max_text_tokens)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                prompt = validate_prompt(triton_io.scalar(pb_utils, request, "prompt", required=True))
                ids, mask = self.tok.encode([prompt])
                responses.append(
                    pb_utils.InferenceResponse(
                        [pb_utils.Tensor("input_ids", ids[0]), pb_utils.Tensor("attention_mask", mask[0])]
                    )
                )
            except Exception as exc:
                responses.append(triton_io.error_response(pb_utils, exc))
        return responses
