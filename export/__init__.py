"""Export a MusicGen checkpoint to ONNX graphs staged in the Triton model repository (needs torch)."""
