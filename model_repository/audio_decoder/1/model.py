"""audio_codes [K, frames] -> audio [channels, samples], sample_rate: a whole clip, or one chunk of a clip
decoded chunk by chunk (musicgen_stream): clip_frames, decode_to and the codec_state the previous chunk
returned (absent for the first) -> the audio of frames [previous decode_to, decode_to) and the next state."""

import numpy as np
import triton_python_backend_utils as pb_utils

from musicgen_runtime import manifest, triton_io
from musicgen_runtime.codec import AudioDecoder, CodecState
from musicgen_runtime.validation import ValidationError


class TritonPythonModel:
    def initialize(self, args):
        d = triton_io.model_dir(args)
        self.dims = manifest.dims(manifest.read(d))
        self.decoder = AudioDecoder.from_directory(d, triton_io.device(args))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(self._decode(request)))
            except Exception as exc:
                responses.append(triton_io.error_response(pb_utils, exc))
        return responses

    def _decode(self, request):
        codes = triton_io.array(pb_utils, request, "audio_codes")
        if codes.ndim != 2 or codes.shape[0] != self.dims.num_codebooks or codes.shape[1] < 1:
            raise ValidationError(f"audio_codes must be [{self.dims.num_codebooks}, frames], got {list(codes.shape)}")
        if codes.min() < 0 or codes.max() >= self.dims.vocab_size:
            raise ValidationError(f"audio_codes must be in [0, {self.dims.vocab_size})")
        total = triton_io.scalar(pb_utils, request, "clip_frames")
        upto = triton_io.scalar(pb_utils, request, "decode_to")
        flat = pb_utils.get_input_tensor_by_name(request, "codec_state")
        total = codes.shape[1] if total is None else int(total)
        upto = total if upto is None else int(upto)
        state = None if flat is None else CodecState.unpack(flat.as_numpy(), self.decoder.layers, self.decoder.width)
        audio, state = self.decoder.decode(codes[None], total, upto, state)
        out = [
            pb_utils.Tensor("audio", audio[0]),
            pb_utils.Tensor("sample_rate", np.array([self.dims.sample_rate], np.int32)),
        ]
        if "codec_state" in request.requested_output_names():
            out.append(pb_utils.Tensor("codec_state", state.pack()))
        return out
