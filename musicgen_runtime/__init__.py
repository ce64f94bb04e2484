"""Runtime core shared by the Triton models, the client, the UI and the benchmarks. Never torch.

Every role imports only numpy and soundfile from here (validation, audio_io, chroma, progress,
prompt_language, ...); the inference modules (lm, text, onnx_session, ...) also need onnxruntime and
tokenizers, the `runtime` extra, which only the server side installs (docs/install.md).
"""
