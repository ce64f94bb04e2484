"""Returns the export manifest (JSON) staged next to this model by the export, without server paths."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from musicgen_runtime import manifest, triton_io


class TritonPythonModel:
    def initialize(self, args):
        self.text = json.dumps(manifest.public(manifest.read(triton_io.model_dir(args)))).encode()

    def execute(self, requests):
        out = pb_utils.Tensor("manifest", np.array([self.text], dtype=object))
        return [pb_utils.InferenceResponse([out]) for _ in requests]
