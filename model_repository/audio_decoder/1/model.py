"""audio_codes [K, frames] -> audio [channels, samples], sample_rate."""

import numpy as np
import triton_python_backend_utils as pb_utils

from musicgen_runtime import manifest, names, triton_io
from musicgen_runtime.codec import AudioDecoder
from musicgen_runtime.validation import ValidationError


class TritonPythonModel:
    def initialize(self, args):
        d = triton_io.model_dir(args)
        self.dims = manifest.dims(manifest.read(d))
        self.decoder = AudioDecoder(d / names.AUDIO_DECODER_FILE, self.dims.hop_length, triton_io.device(args))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                codes = triton_io.array(pb_utils, request, "audio_codes")
                if codes.ndim != 2 or codes.shape[0] != self.dims.num_codebooks or codes.shape[1] < 1:
                    raise ValidationError(
                        f"audio_codes must be [{self.dims.num_codebooks}, frames], got {list(codes.shape)}"
                    )
                if codes.min() < 0 or codes.max() >= self.dims.vocab_size:
                    raise ValidationError(f"audio_codes must be in [0, {self.dims.vocab_size})")
                audio = self.decoder(codes[None])[0]
                rate = np.array([self.dims.sample_rate], np.int32)
                responses.append(
                    pb_utils.InferenceResponse([pb_utils.Tensor("audio", audio), pb_utils.Tensor("sample_rate", rate)])
                )
            except Exception as exc:
                responses.append(triton_io.error_response(pb_utils, exc))
        return responses
