"""Runtime core shared by the Triton models, the client, the UI and the benchmarks.

Needs numpy, onnxruntime and tokenizers only — never torch.
"""
